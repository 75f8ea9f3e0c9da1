"""Privacy noise comes from the OS's CSPRNG value by value: a party that saw some of it (a class a
client lacks sends pure noise) learns nothing about the rest — unlike a Mersenne Twister, whose
state follows from its outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrs.federated import noise as noise_module
from fedrs.federated.noise import SecretNoise, gaussian, noise_generator, uniform


def test_secret_noise_is_os_randomness_and_deterministic_noise_only_on_request(monkeypatch):
    """Every value is a function of os.urandom's bytes (the kernel CSPRNG) — not of a seeded
    generator: fed the same bytes twice it draws the same values, fed other bytes other values."""
    source = noise_generator()
    assert isinstance(source, SecretNoise)
    calls = []

    def fake_urandom(n):
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(range(n % 256))

    monkeypatch.setattr(noise_module.os, "urandom", fake_urandom)
    first, second = gaussian((5, 3), source), gaussian((5, 3), source)
    assert calls and torch.equal(first, second)  # nothing but those bytes decided the values
    monkeypatch.undo()
    assert not torch.equal(gaussian((5, 3), source), first)
    seeded = noise_generator(7)
    assert isinstance(seeded, torch.Generator)  # tests only: reproducible, and removable
    assert torch.equal(gaussian((4,), seeded), gaussian((4,), noise_generator(7)))


def test_a_party_that_saw_the_noise_cannot_predict_the_next_draw():
    """The Mersenne Twister behind torch's generator is predictable from its past outputs: with its
    state (as an attacker reconstructs it from 624 outputs) the next noise is known exactly. The
    CSPRNG's next draw is not a function of anything the party saw."""
    twister = torch.Generator().manual_seed(2**62 + 12345)  # even a secret 63-bit seed
    state = twister.get_state()  # what 624 observed outputs give an attacker
    seen = torch.randn(1000, generator=twister, dtype=torch.float64)
    replay = torch.Generator()
    replay.set_state(state)
    assert torch.equal(torch.randn(1000, generator=replay, dtype=torch.float64), seen)
    secret = SecretNoise()
    observed = secret.randn((1000,))
    following = secret.randn((1000,))
    assert not torch.equal(observed, following)
    assert abs(float(np.corrcoef(observed.numpy(), following.numpy())[0, 1])) < 0.15


def test_secret_noise_has_the_right_distribution():
    source = SecretNoise()
    values = gaussian((200_000,), source)
    assert values.dtype == torch.float64 and values.shape == (200_000,)
    assert abs(float(values.mean())) < 0.01 and float(values.std()) == pytest.approx(1.0, abs=0.01)
    assert float((values.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=0.001)
    odd = gaussian((3, 5, 7), source)
    assert odd.shape == (3, 5, 7) and torch.isfinite(odd).all()
    u = uniform(100_000, source)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0 and float(u.mean()) == pytest.approx(0.5, abs=0.01)
