"""Stage 1's linear probe: LDA from pooled class statistics (what the clients send), and the probe
pass of a federated DDPM run — scores per round, only statistics travel, small classes stay home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrs.datasets import NpzDataset
from fedrs.feddiff.probe import ProbeConfig, lda, probe_scores, probe_statistics, split_statistics
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.calibration import pool_statistics
from fedrs.federated.inprocess import FIRST_NODE
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import run_rounds
from tests.federated.fake_grid import FakeGrid


def _blobs(n, seed, shift=3.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n)
    centres = torch.tensor([[0.0, 0.0], [shift, 0.0], [0.0, shift]], dtype=torch.float64)
    return centres[labels] + torch.randn(3 * n, 2, generator=g, dtype=torch.float64), labels


def test_lda_from_two_clients_statistics_is_lda_from_all_pixels_and_separates_the_classes():
    x, y = _blobs(40, 0)
    noise, _ = _blobs(40, 1, shift=0.0)  # an input that carries no class information
    inputs = {"signal": x, "noise": noise}
    halves = [probe_statistics({k: v[idx] for k, v in inputs.items()}, y[idx], 3, minimum=5)
              for idx in (torch.arange(0, 120, 2), torch.arange(1, 120, 2))]
    pooled = pool_statistics(halves, keys=sorted(halves[0]))
    whole = probe_statistics(inputs, y, 3, minimum=5)
    for key in whole:
        assert torch.allclose(pooled[key], whole[key])
    weights, biases, classes = lda(split_statistics(pooled)["signal"], ridge=1e-3)
    assert weights.shape == (3, 2) and classes.tolist() == [0, 1, 2]
    vx, vy = _blobs(30, 2)
    scores = probe_scores(pooled, {"signal": vx, "noise": _blobs(30, 3, shift=0.0)[0]}, vy.numpy(), 3, 1e-3)
    assert scores["signal"] > 0.9 and scores["noise"] < 0.6


def test_a_client_withholds_small_classes_from_the_probe_too():
    x, y = _blobs(4, 0)  # four pixels a class: below the minimum of five
    sent = probe_statistics({"raw": x}, y, 3, minimum=5)
    assert not sent["raw.count"].any() and not sent["raw.outer"].any()
    with pytest.raises(ValueError, match="min_client_pixels"):
        ProbeConfig(min_client_pixels=2)
    assert ProbeConfig(every=3).due(3, 10) and ProbeConfig(every=3).due(10, 10) and not ProbeConfig(every=3).due(4, 10)


def test_a_federated_ddpm_run_probes_its_features_each_round(tiny_split_federation):
    fed = tiny_split_federation
    bands = int(np.asarray(fed["test"]["hsi"]).shape[1])
    cfg = FederatedConfig.from_dict(dict(
        algorithm="ddpm_hsi", model={"in_channels": bands, "base_channels": 8, "steps": 50},
        train={"epochs": 1, "batch_size": 16}, num_rounds=2, min_clients=1, seed=3, partition_dir=fed["dir"],
        eval_samples=200, validation="server", statistics_pass=False,
        probe={"timesteps": [5, 20], "min_client_pixels": 3},
        downlink_compression={"rank": 2, "quantize_bits": 8}))
    grid = FakeGrid(4)
    result = run_rounds(grid, cfg, fed["test"], 4)
    for row in result["history"]:
        assert {"val_probe_raw", "val_probe_t5", "val_probe_t20"} <= set(row)
        assert all(0.0 <= row[k] <= 1.0 for k in ("val_probe_raw", "val_probe_t5", "val_probe_t20"))
    replies = [m for m in grid.received if m.metadata.message_type == "query.probe"]
    assert len(replies) == 4  # the two HSI holders, two rounds
    for reply in replies:  # only class statistics, and none of a class of one or two pixels
        arrays = reply.content.array_records["arrays"]
        assert set(arrays) == {f"{i}.{s}" for i in ("raw", "t5", "t20") for s in ("count", "sum", "outer")}
        counts = arrays["raw.count"].numpy()
        assert ((counts == 0) | (counts >= 3)).all() and counts.any()
    assert any(t["payload"] == "probe" for t in result["traffic"])
    # the statistics are those of the exact final U-Net (a compressed download would move the features
    # by more than they vary from pixel to pixel), as the server's validation features are
    algorithm = get_algorithm("ddpm_hsi")
    model = algorithm.build_model(cfg.model)
    model.load_state_dict(result["state"])
    last = {m.metadata.src_node_id: m for m in replies[-2:]}
    for node, reply in last.items():
        data = NpzDataset(str(Path(fed["dir"]) / f"client_{node - FIRST_NODE:03d}.npz")).load()
        inputs = algorithm.probe_inputs(model, data, (5, 20), 3)
        expected = probe_statistics(inputs, torch.as_tensor(np.asarray(data["labels"])),
                                    int(fed["test"]["num_classes"]), 3)
        sent = reply.content.array_records["arrays"].to_torch_state_dict()
        assert all(torch.allclose(sent[k], expected[k], rtol=1e-6, atol=1e-9) for k in expected)
