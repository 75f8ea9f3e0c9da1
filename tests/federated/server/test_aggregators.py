"""The aggregator is chosen once, from the configuration: plain, client-level DP, SecAgg+ (with DP
noise when both are set) — and refuses what it cannot do before the first round."""

import pytest

from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.server.aggregators import PlainAggregator, PrivateAggregator, SecureAggregator, make_aggregator
from fedrs.federated.server.config import FederatedConfig

DP = {"noise_multiplier": 0.5, "clipping_norm": 1.0, "clipping": "client"}


def _cfg(**overrides):
    return FederatedConfig.from_dict({"algorithm": "fedavg", "model": {}, **overrides})


def test_the_configuration_chooses_the_aggregator():
    assert type(make_aggregator(_cfg())) is PlainAggregator
    assert type(make_aggregator(_cfg(privacy=DP))) is PrivateAggregator
    assert type(make_aggregator(_cfg(secure_aggregation={}))) is SecureAggregator
    assert type(make_aggregator(_cfg(secure_aggregation={}, privacy=DP))) is SecureAggregator


def test_secure_aggregation_refuses_coded_uploads_before_the_first_round():
    cfg = _cfg(secure_aggregation={}, compression={"rank": 2})
    with pytest.raises(ValueError, match="compression"):
        make_aggregator(cfg).check(cfg, get_algorithm("fedavg"))
