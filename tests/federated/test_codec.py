import numpy as np
import pytest
import torch

from fedrs.federated.codec import CodecConfig, ErrorFeedback, decode, encode, quantise


def low_rank_plus_noise(m, n, rank, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) + noise * torch.randn(
        m, n, generator=g
    )


def test_error_within_the_rank_bound():
    a = low_rank_plus_noise(64, 48, 6, 0.3)
    for k in (2, 4, 8):
        enc = encode(a, CodecConfig(rank=k))
        assert enc.kind == "lowrank" and enc.rank == k
        optimal = torch.linalg.svdvals(a)[k:].pow(2).sum().sqrt()  # Eckart–Young: best rank-k error
        error = torch.linalg.norm(a - decode(enc))
        assert error <= 1.05 * optimal + 1e-4


def test_exact_low_rank_matrix_is_recovered():
    a = low_rank_plus_noise(40, 30, 3, 0.0)
    assert torch.allclose(decode(encode(a, CodecConfig(rank=3))), a, atol=1e-3)


def test_energy_picks_the_smallest_sufficient_rank():
    u, _ = torch.linalg.qr(torch.randn(50, 50, generator=torch.Generator().manual_seed(1)))
    v, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(2)))
    singular = torch.tensor([10.0, 5.0, 2.0, 1.0] + [0.01] * 36)
    a = u[:, :40] @ torch.diag(singular) @ v.T
    energy = singular.pow(2).cumsum(0) / singular.pow(2).sum()
    assert energy[1] < 0.97 < energy[2]  # 125/130 and 129/130
    assert encode(a, CodecConfig(rank=None, energy=0.97)).rank == 3
    assert encode(a, CodecConfig(rank=2, energy=0.97)).rank == 2  # the rank caps the energy rule


def test_exact_byte_counts():
    a = low_rank_plus_noise(100, 60, 4, 0.1)
    assert encode(a, CodecConfig(rank=4)).nbytes == (100 * 4 + 4 * 60) * 4
    assert encode(a, CodecConfig(rank=4, quantize_bits=8)).nbytes == (100 * 4 + 4 * 60) + 2 * 8
    enc = encode(a, CodecConfig(rank=4))
    assert enc.dense_nbytes == 100 * 60 * 4


def test_dense_fallback():
    square = torch.randn(16, 16)  # rank 8 factors: 16·8 + 8·16 = 256 values, not fewer than 256
    enc = encode(square, CodecConfig(rank=8, min_elements=1))
    assert enc.kind == "dense" and enc.nbytes == 16 * 16 * 4
    assert torch.equal(decode(enc), square)
    assert encode(torch.randn(10), CodecConfig(rank=2)).kind == "dense"  # a vector
    assert encode(torch.randn(8, 8), CodecConfig(rank=1)).kind == "dense"  # below min_elements


def test_conv_weights_keep_their_shape():
    w = torch.randn(32, 16, 3, 3)
    out = decode(encode(w, CodecConfig(rank=4)))
    assert out.shape == w.shape


def test_quantisation_error_is_half_a_step():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    q = quantise(x)
    assert np.abs(q.dequantise() - x).max() <= q.scale / 2 + 1e-6
    assert q.nbytes == 1000 + 8


def test_error_feedback_loses_nothing_over_rounds():
    feedback = ErrorFeedback()
    cfg = CodecConfig(rank=2)
    updates = [low_rank_plus_noise(40, 30, 8, 0.2, seed=s) for s in range(5)]
    sent = torch.zeros(40, 30)
    for u in updates:
        sent += decode(feedback.encode("w", u, cfg))
    # what arrived plus what is still owed equals everything that was meant to be sent
    assert torch.allclose(sent + feedback.residual["w"], sum(updates), atol=1e-3)
    restored = ErrorFeedback.from_state(feedback.state())
    assert torch.equal(restored.residual["w"], feedback.residual["w"])


def test_config_validation():
    with pytest.raises(ValueError, match="set rank, energy or both"):
        CodecConfig.from_dict({"rank": None})
    with pytest.raises(ValueError, match="expected 8 or null"):
        CodecConfig.from_dict({"quantize_bits": 4})
    with pytest.raises(ValueError, match=r"unknown keys \['bits'\]"):
        CodecConfig.from_dict({"bits": 8})


def test_error_feedback_can_be_switched_off():
    from fedrs.federated.codec import CodecConfig, ErrorFeedback

    torch.manual_seed(0)
    update = torch.randn(64, 64)
    with_ef, without = ErrorFeedback(), ErrorFeedback()
    with_ef.encode("w", update, CodecConfig(rank=2))
    without.encode("w", update, CodecConfig(rank=2, error_feedback=False))
    assert with_ef.residual["w"].norm() > 0 and without.residual == {}
