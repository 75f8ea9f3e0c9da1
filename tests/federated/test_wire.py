import torch

from fedrs.federated.codec import CodecConfig, ErrorFeedback
from fedrs.federated.wire import pack_update, payload_bytes, unpack_update


def states():
    g = torch.Generator().manual_seed(0)
    reference = {"conv.weight": torch.randn(32, 8, 3, 3, generator=g), "bn.num_batches_tracked": torch.tensor(5),
                 "bias": torch.randn(32, generator=g)}
    delta = torch.randn(32, 2, generator=g) @ torch.randn(2, 72, generator=g)  # a rank-2 update
    local = {"conv.weight": reference["conv.weight"] + delta.reshape(32, 8, 3, 3),
             "bn.num_batches_tracked": torch.tensor(9), "bias": reference["bias"] + 0.1}
    return reference, local


def test_round_trip_of_a_low_rank_update():
    reference, local = states()
    arrays, consts, dense, sent = pack_update(local, reference, CodecConfig(rank=2), ErrorFeedback())
    assert "conv.weight|left" in arrays and "bias|dense" in arrays and "bn.num_batches_tracked|raw" in arrays
    assert dense == payload_bytes(local) and sent < dense
    assert sent == (32 * 2 + 2 * 72) * 4 + 32 * 4 + 8  # factors + dense bias + the int64 counter
    back = unpack_update(arrays, consts, reference)
    assert torch.allclose(back["conv.weight"], local["conv.weight"], atol=1e-3)
    assert back["bn.num_batches_tracked"].item() == 9 and back["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.allclose(back["bias"], local["bias"])


def test_quantised_factors_travel_with_their_constants():
    reference, local = states()
    arrays, consts, _, sent = pack_update(local, reference, CodecConfig(rank=2, quantize_bits=8), ErrorFeedback())
    assert arrays["conv.weight|left"].numpy().dtype.name == "uint8" and "conv.weight|left|scale" in consts
    back = unpack_update(arrays, consts, reference)
    error = (back["conv.weight"] - local["conv.weight"]).abs().max()
    assert 0 < error < 0.2  # 8-bit factors: close, not exact


def test_a_non_finite_update_travels_raw_so_the_server_can_reject_it():
    """A client whose model went non-finite (e.g. after a DP-noised aggregate) still answers: the
    codec cannot factor NaN (its SVD fails), so the tensor goes raw and the server screens it out."""
    from fedrs.federated.aggregation import ClientUpdate, screen_updates

    reference, local = states()
    local["conv.weight"] = local["conv.weight"].clone()
    local["conv.weight"][0, 0, 0, 0] = float("nan")
    feedback = ErrorFeedback()
    arrays, consts, _, _ = pack_update(local, reference, CodecConfig(rank=2, quantize_bits=8), feedback)
    assert "conv.weight|raw" in arrays and "bias|dense" in arrays
    assert "conv.weight" not in feedback.state()  # no NaN kept for the next round
    back = unpack_update(arrays, consts, reference)
    assert torch.isnan(back["conv.weight"][0, 0, 0, 0]) and torch.equal(back["conv.weight"][1], local["conv.weight"][1])
    accepted, rejected = screen_updates([ClientUpdate(0, back, 10, ("hsi",))], reference, 10.0)
    assert accepted == [] and rejected == [(0, "non-finite values in conv.weight")]


def test_an_exact_download_sends_only_what_changed_and_decodes_bit_exact():
    from fedrs.federated.wire import pack_exact, unpack_tensors

    reference, _ = states()
    target = {**reference, "bias": reference["bias"] + 1e-7}  # below what a float delta keeps exactly
    arrays, consts, dense, sent = pack_exact(target, reference)
    assert "conv.weight|same" in arrays and "bn.num_batches_tracked|same" in arrays and "bias|raw" in arrays
    assert dense == payload_bytes(target) and sent == 32 * 4  # only the changed bias travels
    back = unpack_tensors(arrays, consts, reference)
    assert all(torch.equal(back[k], target[k]) and back[k].dtype == target[k].dtype for k in target)
    back["conv.weight"] += 1  # a copy, not the receiver's reference itself
    assert not torch.equal(back["conv.weight"], reference["conv.weight"])
