"""Session fixtures: the tiny federations of tests/federated/tiny.py, built once per test session."""

from __future__ import annotations

import pytest

from tests.federated.tiny import horizontal_federation, split_federation


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory) -> dict:
    return horizontal_federation(tmp_path_factory.mktemp("federation"))


@pytest.fixture(scope="session")
def tiny_split_federation(tmp_path_factory) -> dict:
    """FedDiff's layout: 2 sites × {HSI holder, LiDAR holder}, with (random) diffusion features."""
    return split_federation(tmp_path_factory.mktemp("split"))
