"""The run's configuration: parsed strictly, digested without the settings a resume may change, and
what of it every message carries."""

import pytest

from fedrs.federated.server.config import RESUMABLE, FederatedConfig


def _cfg(**overrides):
    return FederatedConfig.from_dict({"algorithm": "fedavg", "model": {"bands": 4}, "seed": 3, **overrides})


def test_the_digest_ignores_what_a_resume_may_change_and_nothing_else():
    base = _cfg().digest()
    assert _cfg(round_timeout=5, stop_after_round=2, resume=True, checkpoint_dir="x").digest() == base
    assert _cfg(seed=4).digest() != base and _cfg(num_rounds=99).digest() != base
    assert {"resume", "round_timeout", "faults"} <= RESUMABLE and "seed" not in RESUMABLE


def test_messages_carry_what_a_client_computes_with():
    settings = _cfg(client_threads=2, train={"lr": 0.1}).settings()
    assert settings["seed"] == 3 and settings["train"] == {"lr": 0.1} and settings["client_threads"] == 2
    assert "checkpoint_dir" not in settings and "round_timeout" not in settings


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(ValueError, match="num_round"):
        _cfg(num_round=3)
