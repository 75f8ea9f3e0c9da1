"""The in-process engine: Flower's message semantics without a transport (its equality with the
simulation engine, bit for bit, is tested beside a real simulation in tests/federated/test_simulation.py)."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedrs.federated.engine import run_job
from fedrs.federated.inprocess import FIRST_NODE, InProcessGrid
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.server.config import FederatedConfig


def test_a_client_that_raises_answers_with_an_error_and_each_node_keeps_its_own_state(tiny_federation):
    grid = InProcessGrid(2)
    assert list(grid.get_node_ids()) == [FIRST_NODE, FIRST_NODE + 1]
    broken = Message(RecordDict({"config": ConfigRecord({"settings": "{not json"})}), dst_node_id=FIRST_NODE,
                     message_type="query")
    (reply,) = grid.send_and_receive([broken])
    assert reply.has_error() and "partition 0" in reply.error.reason
    assert grid.contexts[FIRST_NODE] is not grid.contexts[FIRST_NODE + 1]
    assert grid.contexts[FIRST_NODE + 1].node_config == {"partition-id": 1}


def test_a_job_runs_on_the_inprocess_engine(tiny_federation):
    fed = tiny_federation
    cfg = FederatedConfig.from_dict(dict(algorithm="fedavg", model=fed["spec"], train={"epochs": 1, "batch_size": 8},
                                         num_rounds=2, min_clients=1, seed=5, partition_dir=fed["dir"]))
    out = run_job(RoundsJob(cfg, fed["test"]), 3, {"engine": "inprocess"})
    assert [r["accepted"] for r in out["history"]] == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="expected one of \\['simulation', 'deployment', 'inprocess'\\]"):
        run_job(RoundsJob(cfg, fed["test"]), 3, {"engine": "ray"})
