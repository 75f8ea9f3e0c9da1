import json
import os
from pathlib import Path

import numpy as np

from fedrs.datasets import NpzDataset
from fedrs.federated import client_app


def _write(path, value, n=10):
    NpzDataset(str(path)).save({"labels": np.full(n, value, np.int64), "x": np.zeros((n, 100), np.float32)})


def test_bundles_are_read_once_kept_lru_and_reread_when_rewritten(tmp_path, monkeypatch):
    monkeypatch.setattr(client_app, "_CACHE", type(client_app._CACHE)())
    reads = []
    original = NpzDataset.load
    monkeypatch.setattr(NpzDataset, "load", lambda self: reads.append(1) or original(self))
    a, b, c = (tmp_path / f"client_00{i}.npz" for i in range(3))
    for i, p in enumerate((a, b, c)):
        _write(p, i)
    extra = tmp_path / "features"
    extra.mkdir()
    NpzDataset(str(extra / a.name)).save({"hsi_features": np.ones((10, 2), np.float32)})
    first = client_app.load_partition(a, [str(extra)])
    assert set(first) >= {"labels", "x", "hsi_features"} and len(reads) == 2  # bundle + its features
    for p in (b, a, b, a):  # one actor serving two clients in turn: no re-reads
        client_app.load_partition(p)
    assert len(reads) == 4  # a without extra dirs is another key: read once; b read once
    # a bound of about two bundles evicts the least recently used
    monkeypatch.setattr(client_app, "CACHE_BYTES", 2 * (10 * 100 * 4 + 10 * 8) + 100)
    client_app.load_partition(c)
    kept = [tuple(Path(p).name for p, _ in key) for key in client_app._CACHE]
    assert kept == [("client_000.npz",), ("client_002.npz",)] and len(reads) == 5  # a+features and b evicted
    # a rewritten file (new modification time) is read again
    _write(b, 7)
    os.utime(b, ns=(os.stat(b).st_atime_ns, os.stat(b).st_mtime_ns + 10**9))
    assert int(client_app.load_partition(b)["labels"][0]) == 7


def test_a_client_computes_on_the_thread_count_its_run_sets_whatever_its_launcher_gave_it():
    """Ray gives a simulated client num_cpus threads, a SuperNode every core; reductions split by
    thread count, so the handler pins the run's ``client_threads`` (and gives the process its count back)."""
    import pytest
    import torch
    from flwr.app import ConfigRecord, RecordDict

    from fedrs.federated.server.config import FederatedConfig

    def message(records):
        return type("Message", (), {"content": RecordDict(records)})()

    seen = []

    @client_app.reports_traceback
    def handler(msg, context):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise ValueError("boom")
        return msg

    launcher = torch.get_num_threads()
    settings = FederatedConfig(algorithm="fedavg", model={}, client_threads=3).settings()
    context = type("Context", (), {"node_config": {"partition-id": 0}})()
    sent = message({"config": ConfigRecord({"settings": json.dumps(settings)})})
    handler(sent, context)
    with pytest.raises(client_app.ClientFailure, match="boom"):
        handler(sent, context)
    handler(message({}), context)  # a SecAgg+ stage: no settings
    assert seen == [3, 3, client_app.DEFAULT_CLIENT_THREADS]
    assert torch.get_num_threads() == launcher
    default = FederatedConfig(algorithm="fedavg", model={}).settings()["client_threads"]
    assert default == client_app.DEFAULT_CLIENT_THREADS
