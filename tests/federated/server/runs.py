"""A round loop over a tiny federation on the fake grid: the configuration and the started run
that the server, privacy, SecAgg+ and relay tests share."""

from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import start_run
from tests.federated.fake_grid import FakeGrid


def config(fed, **overrides):
    base = dict(algorithm="fedavg", model=fed["spec"], train={"epochs": 1, "batch_size": 8}, num_rounds=3,
                min_clients=1, seed=5, partition_dir=fed["dir"], eval_samples=200)
    return FederatedConfig.from_dict({**base, **overrides})


def started(fed, grid=None, **overrides):
    grid = grid or FakeGrid(fed["num_clients"])
    run, first = start_run(grid, config(fed, **overrides), fed["test"], fed["num_clients"])
    return grid, run, first
