"""Tiny configuration for algorithm pipelines: 3 IID multimodal clients, 2 rounds, a small model."""

import pytest


@pytest.fixture
def tiny_baselines(kedro_project):
    kedro_project.write_conf("local", "parameters_partition.yml", {
        "modality_split": {"partition": {"min_samples_per_client": 2}},
        "horizontal": {"partition": {"num_clients": 3, "scheme": "iid", "multimodal_ratio": 1.0,
                                     "min_samples_per_client": 2}},
    })
    kedro_project.write_conf("local", "parameters_baselines.yml", {"baseline": {
        "model": {"width": 8, "dim": 16}, "train": {"epochs": 1, "batch_size": 8},
        "federated": {"num_rounds": 2, "min_clients": 1, "eval_samples": 300},
        "resources": {"total_cpus": 2},
    }})
    return kedro_project
