"""The client's upload path: each step on its own, and the composition each run's settings choose."""

import pytest
import torch
from flwr.app import Context, RecordDict

from fedrs.federated import upload
from fedrs.federated.secure import HELD_UPDATE
from fedrs.federated.wire import payload_bytes, unpack_update

NOISED = {"noise_multiplier": 1.0, "clipping_norm": 0.5, "clipping": "client"}


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


@pytest.fixture
def update():
    g = torch.Generator().manual_seed(3)
    received = {"w": torch.randn(40, 5, generator=g), "b": torch.randn(5, generator=g), "steps": torch.tensor(4)}
    state = {"w": received["w"] + torch.randn(40, 5, generator=g), "b": received["b"] + 1.0, "steps": torch.tensor(5)}
    return state, received


def _names(steps):
    return [getattr(s, "__qualname__", "").split(".")[0] for s in steps]


def test_the_settings_choose_the_steps_and_exactly_one_sender(update):
    _, received = update
    ctx = _context()
    assert _names(upload.upload_path({}, ctx, received, 1, 0)) == ["published", "dense"]
    assert _names(upload.upload_path({"compression": {"rank": 2}}, ctx, received, 1, 0)) == [
        "published", "encoded"]
    secure = {"secure_aggregation": {}, "compression": {"rank": 2}, "privacy": NOISED}
    assert _names(upload.upload_path(secure, ctx, received, 1, 0, poison="nan")) == [
        "clipped_to", "poisoned_with_nan", "published", "held_for_secure_sums"]  # SecAgg+ wins over the codec
    server_clipped = {"privacy": {**NOISED, "clipping": "server"}}
    assert _names(upload.upload_path(server_clipped, ctx, received, 1, 0)) == ["published", "dense"]


def test_a_path_without_a_sender_is_refused(update):
    state, _ = update
    with pytest.raises(RuntimeError, match="must end with a sender"):
        upload.run_path([upload.published({})], upload.Outgoing(state, {}))


def test_client_clipping_bounds_the_update_and_noised_dp_keeps_its_norm_and_loss_home(update):
    state, received = update
    steps = upload.upload_path({"privacy": NOISED}, _context(), received, 1, 0)
    out = upload.run_path(steps, upload.Outgoing(state, {"train_loss": 0.7, "client_id": 3}))
    moved = torch.cat([(out.state[k] - received[k]).flatten() for k in ("w", "b")])
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-5)
    assert "update_norm" not in out.metrics and "train_loss" not in out.metrics  # under noised DP neither leaves
    assert out.metrics["client_id"] == 3 and out.metrics["bytes_sent"] == out.metrics["bytes_dense"]
    sent = out.arrays.to_torch_state_dict()
    assert torch.equal(sent["w"], out.state["w"]) and torch.equal(sent["steps"], state["steps"])
    # without noise the norm before clipping is reported (the server screens with it)
    clip_only = {"privacy": {**NOISED, "noise_multiplier": 0.0}}
    out = upload.run_path(upload.upload_path(clip_only, _context(), received, 1, 0),
                          upload.Outgoing(state, {"train_loss": 0.7}))
    assert out.metrics["update_norm"] > 0.5 and out.metrics["train_loss"] == 0.7


def test_the_poison_hook_makes_the_update_non_finite_and_the_secure_sender_refuses_it(update):
    state, received = update
    poisoned = upload.poisoned_with_nan(upload.Outgoing(state, {}))
    assert torch.isnan(poisoned.state["w"]).all() and torch.equal(poisoned.state["b"], state["b"])
    steps = upload.upload_path({"secure_aggregation": {}}, _context(), received, 2, 9, poison="nan")
    with pytest.raises(ValueError, match="non-finite"):
        upload.run_path(steps, upload.Outgoing(state, {}))


def test_the_secure_sender_holds_the_contribution_and_sends_nothing(update):
    state, received = update
    ctx = _context()
    out = upload.run_path(upload.upload_path({"secure_aggregation": {}}, ctx, received, 2, 9),
                          upload.Outgoing(state, {}))
    assert out.arrays is None and out.metrics["bytes_sent"] == 0
    assert out.metrics["bytes_dense"] == payload_bytes(state)
    held = ctx.state.array_records[HELD_UPDATE].to_torch_state_dict()
    assert torch.allclose(held["b"], torch.ones(5, dtype=torch.float64)) and "steps" not in held


def test_the_codec_sender_keeps_its_error_feedback_on_the_node_between_rounds(update):
    state, received = update
    codec = {"rank": 1, "min_elements": 16}
    ctx = _context()
    out = upload.run_path(upload.upload_path({"compression": codec}, ctx, received, 1, 0),
                          upload.Outgoing(state, {}))
    assert 0 < out.metrics["bytes_sent"] < out.metrics["bytes_dense"]
    residual = ctx.state.array_records["codec_residual"].to_torch_state_dict()
    assert residual and float(next(iter(residual.values())).abs().sum()) > 0  # what rank 1 left out waits here
    decoded = unpack_update(out.arrays, out.codec, received)
    assert torch.equal(decoded["b"], state["b"])  # small tensors travel dense
