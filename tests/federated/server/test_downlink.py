"""The global weights on their way down: the first copy dense, then compressed deltas against what
the client holds (decoded on the server exactly as the client will), dense again after a failure."""

import torch

from fedrs.federated.codec import CodecConfig
from fedrs.federated.server.downlink import Downlink
from fedrs.federated.wire import unpack_tensors


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(16, 8, 3, 3, generator=g), "fc.bias": torch.randn(10, generator=g)}


def test_dense_first_then_deltas_and_dense_again_after_forget():
    link = Downlink(CodecConfig.from_dict({"rank": 2, "quantize_bits": 8}))
    first = _state(0)
    content, dense, sent, decoded = link.encode(7, first, 1)
    assert dense == sent and "reference" not in content and decoded is first
    moved = {k: v + 0.01 * torch.randn_like(v) for k, v in first.items()}
    content, dense, sent, decoded = link.encode(7, moved, 2)
    assert sent * 2 < dense and int(content["reference"]["round"]) == 1
    # what the client decodes from the records and the copy it holds is what the server recorded
    client = unpack_tensors(content["arrays"], content["down_codec"], first)
    for name in moved:
        assert torch.equal(client[name], decoded[name])
        assert (decoded[name] - moved[name]).abs().max() < 0.05
    link.forget(7)
    _, dense, sent, _ = link.encode(7, moved, 3)
    assert dense == sent


def test_an_exact_download_gives_the_client_the_weights_bit_for_bit():
    link = Downlink(CodecConfig.from_dict({"rank": 2, "quantize_bits": 8}))
    first = _state(1)
    link.encode(0, first, 1)
    final = {**first, "fc.bias": first["fc.bias"] + 1.0}  # only one tensor changed
    content, dense, sent, decoded = link.encode(0, final, 2, exact=True)
    assert all(torch.equal(decoded[k], final[k]) for k in final) and sent < dense


def test_without_a_codec_every_download_is_dense():
    link = Downlink(None)
    for rnd in (1, 2):
        _, dense, sent, _ = link.encode(0, _state(rnd), rnd)
        assert dense == sent


def test_a_download_set_aside_leaves_the_reference_and_the_feedback_as_they_were():
    """What a client scores (validation: clients) is sent aside: coded or exact, the next training
    download is encoded exactly as if it had never been sent."""
    codec = CodecConfig.from_dict({"rank": 2, "quantize_bits": 8})
    plain, scored = Downlink(codec), Downlink(codec)
    states = [_state(0)] + [{k: v + 0.01 * (i + 1) * torch.randn_like(v) for k, v in _state(0).items()}
                            for i in range(3)]
    for rnd, state in enumerate(states, start=1):
        if rnd > 1:
            for exact in (False, True):
                content, _, _, decoded = scored.encode(7, state, rnd, exact=exact, aside=True)
                assert int(content["reference"]["round"]) == rnd - 1  # against what the client trains from
                if exact:
                    assert all(torch.equal(decoded[k], state[k]) for k in state)
        ours, theirs = plain.encode(7, state, rnd), scored.encode(7, state, rnd)
        assert all(torch.equal(ours[3][k], theirs[3][k]) for k in state)
        assert all(torch.equal(plain.references[7][1][k], scored.references[7][1][k]) for k in state)
