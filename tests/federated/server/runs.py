"""A round loop over a tiny federation on the fake grid: the configuration and the started run
that the server, privacy, SecAgg+ and relay tests share."""

from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import start_run
from tests.federated.fake_grid import FakeGrid


def config(fed, **overrides):
    # the server scores its copy of the held-out pixels: these tests count training's messages and faults
    # (the clients' scoring: tests/federated/server/test_validation.py)
    base = dict(algorithm="fedavg", validation="server", model=fed["spec"], train={"epochs": 1, "batch_size": 8},
                num_rounds=3, min_clients=1, seed=5, partition_dir=fed["dir"], eval_samples=200)
    return FederatedConfig.from_dict({**base, **overrides})


def started(fed, grid=None, **overrides):
    grid = grid or FakeGrid(fed["num_clients"])
    run, first = start_run(grid, config(fed, **overrides), fed["test"], fed["num_clients"])
    return grid, run, first
