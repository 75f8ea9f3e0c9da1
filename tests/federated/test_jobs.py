"""A job is what the server runs, whatever the engine: written to files for the deployment engine's
ServerApp and read back, it must be the same job (same result for the same seed)."""

import pytest
import torch

from fedrs.feddiff.features import FeatureJob
from fedrs.federated.jobs import FeaturesJob, RoundsJob, read_job
from fedrs.federated.server.config import FederatedConfig
from tests.federated.fake_grid import FakeGrid


def _rounds_job(fed):
    cfg = FederatedConfig.from_dict({"algorithm": "fedavg", "model": fed["spec"], "num_rounds": 2, "min_clients": 1,
                                     "seed": 3, "partition_dir": fed["dir"], "eval_samples": 100,
                                     "train": {"epochs": 1, "batch_size": 8}})
    return RoundsJob(cfg, fed["test"])


def test_a_rounds_job_read_back_from_its_files_gives_the_same_result(tiny_federation, tmp_path):
    job = _rounds_job(tiny_federation)
    settings = job.write(tmp_path)
    again = read_job(settings)
    assert isinstance(again, RoundsJob) and again.cfg == job.cfg and again.total_steps == 2
    assert sorted(again.validation) == sorted(job.validation)
    progress = []
    n = tiny_federation["num_clients"]
    original = job.run(FakeGrid(n), n)
    replayed = again.run(FakeGrid(n), n, on_round=progress.append)
    assert [row["round"] for row in progress] == [1, 2]
    assert all(torch.equal(original["state"][k], replayed["state"][k]) for k in original["state"])
    assert [r["val_oa"] for r in original["history"]] == [r["val_oa"] for r in replayed["history"]]


def test_a_features_job_keeps_its_unets_and_settings_through_the_files(tmp_path):
    unets = {"hsi": {"spec": {"in_channels": 4, "base_channels": 8}, "state": {"w": torch.arange(6.0)}}}
    job = FeaturesJob(FeatureJob(unets=unets, timesteps=[5, 10], seed=4, store="s", client_threads=2))
    settings = job.write(tmp_path)
    assert "unets" not in settings["features"]  # the weights travel in their own file
    again = read_job(settings)
    assert isinstance(again, FeaturesJob) and again.label == "feddiff_features" and again.total_steps == 1
    assert again.job.timesteps == [5, 10] and again.job.seed == 4 and again.job.client_threads == 2
    assert torch.equal(again.job.unets["hsi"]["state"]["w"], torch.arange(6.0))
    assert again.job.settings() == job.job.settings()


def test_an_unknown_job_kind_is_named():
    with pytest.raises(ValueError, match="'job' is 'ranking'; expected one of"):
        read_job({"job": "ranking"})
