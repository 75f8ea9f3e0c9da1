"""Tiny configuration for algorithm pipelines: 3 IID multimodal clients, 2 rounds, a small model;
FedDiff's on the in-process engine (the deployment test swaps in its SuperLink)."""

import pytest

from tests.conftest import INPROCESS, TINY_BASELINES, TINY_FEDDIFF, TINY_PARTITION


@pytest.fixture
def tiny_baselines(kedro_project):
    kedro_project.write_conf("local", "parameters_partition.yml", TINY_PARTITION)
    kedro_project.write_conf("local", "parameters_baselines.yml", TINY_BASELINES)
    return kedro_project


@pytest.fixture
def tiny_feddiff(tiny_baselines):
    tiny_baselines.write_conf("local", "parameters_feddiff.yml", TINY_FEDDIFF)
    tiny_baselines.write_conf("local", "parameters_federation.yml", INPROCESS)
    return tiny_baselines
