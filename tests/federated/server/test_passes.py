"""The passes after the last round: BatchNorm statistics of the final model."""

import torch

from fedrs.federated.server.loop import run_rounds
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config


def test_the_last_round_pools_the_batchnorm_statistics_of_the_final_model(tiny_federation):
    """Every client sends only its BatchNorm statistics of the final global weights; the pooled
    mean and variance of a first-layer BatchNorm are those of the union of the clients' pixels."""
    from fedrs.datasets import NpzDataset
    from fedrs.federated.algorithms import get_algorithm
    from fedrs.federated.local import norm_statistic_names

    fed = tiny_federation
    train = {"epochs": 1, "batch_size": 1000}  # one batch per client: its statistics are exact
    plain = run_rounds(FakeGrid(3), config(fed, num_rounds=2, train=train, statistics_pass=False), fed["test"], 3)
    pooled = run_rounds(FakeGrid(3), config(fed, num_rounds=2, train=train), fed["test"], 3)
    model = get_algorithm("fedavg").build_model(fed["spec"])
    statistics = norm_statistic_names(model)
    assert statistics and all(torch.equal(plain["state"][k], pooled["state"][k])
                              for k in plain["state"] if k not in statistics)  # nothing else changed
    assert any(not torch.equal(plain["state"][k], pooled["state"][k]) for k in statistics)
    assert [r["statistics_from"] for r in pooled["history"]] == [[], [0, 1, 2]]
    assert plain["history"][-1]["statistics_from"] == []
    assert pooled["history"][-1]["val_oa_before_statistics"] == plain["history"][-1]["val_oa"]
    sent = [t for t in pooled["traffic"] if t["payload"] == "statistics"]
    buffers = dict(model.named_buffers())
    assert [t["client_id"] for t in sent] == [0, 1, 2] and all(t["round"] == 2 for t in sent)
    assert all(t["bytes_dense"] == sum(buffers[k].numel() * buffers[k].element_size() for k in statistics)
               for t in sent)
    model.load_state_dict(pooled["state"])
    lidar = torch.cat([torch.as_tensor(NpzDataset(f"{fed['dir']}/client_{c:03d}.npz").load()["lidar"])
                       for c in range(3)])
    with torch.no_grad():
        conv = model.lidar_encoder.net[0](lidar.float())
    bn = model.lidar_encoder.net[1]
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, conv.var(dim=(0, 2, 3)), rtol=5e-3)  # per client n − 1, not N − 1
