"""Every algorithm through a local update, an aggregation and a prediction with bf16 forced.

Forced bf16 is emulated on CPUs without native bf16, which is slow but fine at this size: a dtype
mismatch anywhere (an fp32 layer fed a bf16 activation outside autocast, say) fails on every
machine, not only on the CPUs that choose bf16 by themselves. Where CUDA is present, every test
runs a second time with CUDA's bf16 autocast (the GPU path; tests/test_cuda.py checks its fp32)."""

import numpy as np
import pytest
import torch

from fedrs.compute import compute_policy
from fedrs.evaluation import evaluate_artifact, load_model
from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.federated.aggregation import ClientUpdate
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.local import batch_inputs
from fedrs.federated.server.loop import run_rounds
from fedrs.results import artifact, temperature_of
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config
from tests.federated.tiny_data import TINY_FEDDIFF_SPEC, TINY_FUSION_SPEC, tiny_client_data, with_diffusion_features

BF16 = {"epochs": 1, "batch_size": 8, "precision": "bf16-force"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True, params=[pytest.param("cpu", id="cpu-bf16-force"),
                                      pytest.param("cuda", id="cuda-bf16", marks=CUDA)])
def device(request, monkeypatch):
    """The bf16 path of this device: every algorithm's config in this module names it."""
    monkeypatch.setitem(BF16, "device", request.param)
    monkeypatch.setitem(BF16, "precision", "bf16-force" if request.param == "cpu" else "bf16")
    return request.param
FUSION_SPEC, FEDDIFF_SPEC = TINY_FUSION_SPEC, TINY_FEDDIFF_SPEC


def _with_features(rng, data):
    return {**with_diffusion_features(rng, data), "num_classes": 3, "class_names": ["a", "b", "c"]}


def _round_trip(name, spec, clients, rnd=1, partners=None):
    """Each client's update from the same global model, the aggregate, and a scored prediction."""
    alg = get_algorithm(name)
    torch.manual_seed(0)
    model = alg.build_model(spec)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    updates = []
    for cid, (modalities, data) in enumerate(clients):
        model.load_state_dict(start)
        extra = {"partner": partners[cid]} if partners else {}
        state, metrics = alg.client_update(model, data, modalities, BF16, seed=cid, rnd=rnd, **extra)
        assert np.isfinite(metrics["train_loss"]), name
        assert all(v.dtype == start[k].dtype for k, v in state.items()), "weights stay in their own dtype"
        updates.append(ClientUpdate(cid, state, len(data["labels"]), modalities, metrics))
    aggregated = alg.aggregate(start, updates)
    assert any(not torch.equal(aggregated[k], start[k]) for k in start)
    model.load_state_dict(aggregated)
    return alg, model


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavg_hsi", "fedavg_lidar", "centralized", "local"])
def test_fusion_baselines_in_bf16(rng, name):
    both = tiny_client_data(rng)
    clients = [(("hsi", "lidar"), both), (("hsi",), tiny_client_data(rng, ("hsi",))),
               (("lidar",), tiny_client_data(rng, ("lidar",)))]
    alg, model = _round_trip(name, FUSION_SPEC, [c for c in clients if get_algorithm(name).is_eligible(c[0])])
    test = {**tiny_client_data(rng), "num_classes": 3, "class_names": ["a", "b", "c"]}
    assert 0.0 <= alg.evaluate(model, test, BF16)["oa"] <= 1.0
    alg.evaluation_variants(model, test, BF16, alg.modalities)


def test_fedcmi_with_infiltration_in_bf16(rng):
    clients = [(("hsi", "lidar"), tiny_client_data(rng)), (("hsi",), tiny_client_data(rng, ("hsi",))),
               (("lidar",), tiny_client_data(rng, ("lidar",)))]
    spec = {**FUSION_SPEC, "dim": 8}
    config_rnd = 3  # past the warm-up: the teacher and the infiltration loss run
    alg = get_algorithm("fedcmi")
    torch.manual_seed(0)
    model = alg.build_model(spec)
    _, metrics = alg.client_update(model, clients[0][1], clients[0][0], {**BF16, "cmi": {"warmup_rounds": 1}},
                                   seed=0, rnd=config_rnd)
    assert metrics["infiltration_loss"] > 0
    alg, model = _round_trip("fedcmi", spec, clients, rnd=config_rnd)
    test = {**tiny_client_data(rng), "num_classes": 3, "class_names": ["a", "b", "c"]}
    variants = alg.evaluation_variants(model, test, BF16, ("hsi", "lidar"))
    assert set(variants) == {"hsi_infiltrated", "hsi_zero_filled", "lidar_infiltrated", "lidar_zero_filled"}


def test_ddpm_and_diffusion_features_in_bf16(rng, device):
    data = tiny_client_data(rng, ("lidar",))
    spec = {"in_channels": 1, "base_channels": 8, "steps": 50}
    alg, model = _round_trip("ddpm_lidar", spec, [(("lidar",), data), (("lidar",), tiny_client_data(rng, ("lidar",)))])
    assert np.isfinite(alg.evaluate(model, data, BF16)["l1"])
    features = diffusion_feature_bundle(model, data["lidar"], [5, 20], 0,
                                        compute_policy(device, BF16["precision"]))
    assert features.dtype == np.float32 and features.shape == (24, 32, 4, 4) and np.isfinite(features).all()


def test_feddiff_with_the_exchange_in_bf16(rng):
    hsi = _with_features(rng, tiny_client_data(rng, ("hsi",)))
    lidar = _with_features(rng, tiny_client_data(rng, ("lidar",)))
    lidar["labels"] = hsi["labels"]
    alg = get_algorithm("feddiff")
    torch.manual_seed(0)
    model = alg.build_model(FEDDIFF_SPEC)
    outputs = {m: alg.client_exchange(model, d, (m,), BF16) for m, d in (("hsi", hsi), ("lidar", lidar))}
    assert all(t.dtype == torch.float32 for o in outputs.values() for t in o.values())
    alg, model = _round_trip("feddiff", FEDDIFF_SPEC, [(("hsi",), hsi), (("lidar",), lidar)],
                             partners=[outputs["lidar"], outputs["hsi"]])
    test = _with_features(rng, tiny_client_data(rng))
    assert 0.0 <= alg.evaluate(model, test, BF16)["oa"] <= 1.0
    assert set(alg.evaluation_variants(model, test, BF16, ("hsi", "lidar"))) == {"hsi_zero_filled", "lidar_zero_filled"}


@pytest.mark.parametrize("name", ["feddiff_centralized", "feddiff_hsi"])
def test_feddiff_variants_without_partner_in_bf16(rng, name):
    data = _with_features(rng, tiny_client_data(rng))
    alg, model = _round_trip(name, FEDDIFF_SPEC, [(("hsi", "lidar"), data)])
    assert 0.0 <= alg.evaluate(model, data, BF16)["oa"] <= 1.0


def test_temperature_scaling_in_bf16(tiny_federation):
    """The clients score their validation pixels at every temperature under bf16 (the logits cast to
    float32 before the cross-entropy): the summed curve is finite, the fit lies inside the grid and T
    divides the last layer alone. In fp32 no class changes. In bf16 the divided weights round afresh,
    so a pixel whose top two logits nearly tie may change class, as it may between bf16 and fp32:
    only such pixels, and few of them (docs/runtime.md)."""
    fed = tiny_federation
    train = {"epochs": 1, "batch_size": 8, "precision": BF16["precision"], "device": BF16["device"]}

    def federated_run(**extra):
        cfg = config(fed, validation="clients", num_rounds=1, train=train, **extra)
        return run_rounds(FakeGrid(3), cfg, RoundsJob(cfg, fed["test"]).validation, 3)

    plain, scaled = federated_run(), federated_run(temperature={})
    last = scaled["history"][-1]
    assert np.isfinite(last["val_loss_by_temperature"]).all() and last["temperature_inside_grid"]
    assert last["val_oa_before_temperature"] == plain["history"][-1]["val_oa"]
    assert last["val_oa"] == pytest.approx(last["val_oa_before_temperature"], abs=0.01)
    assert last["val_loss"] <= last["val_loss_before_temperature"] + 1e-6
    changed = {k for k in plain["state"] if not torch.equal(plain["state"][k], scaled["state"][k])}
    assert len(changed) == 2 and all(k.endswith((".weight", ".bias")) for k in changed)
    for name in changed:
        torch.testing.assert_close(scaled["state"][name], plain["state"][name] / last["temperature"])

    test, fp32 = fed["test"], {"device": BF16["device"]}
    plain_artifact = artifact("fedavg", fed["spec"], ["hsi", "lidar"], plain["state"])
    scaled_artifact = artifact("fedavg", fed["spec"], ["hsi", "lidar"], scaled["state"],
                               **temperature_of(scaled["history"]))
    alg, plain_model = load_model(plain_artifact)
    _, scaled_model = load_model(scaled_artifact)
    np.testing.assert_array_equal(alg.predict(plain_model, test, fp32), alg.predict(scaled_model, test, fp32))
    flipped = alg.predict(plain_model, test, BF16) != alg.predict(scaled_model, test, BF16)
    with torch.no_grad():
        logits = plain_model.cpu()(**batch_inputs(test, slice(None), ("hsi", "lidar"), torch.device("cpu")))
    top = logits.topk(2).values
    margin = ((top[:, 0] - top[:, 1]) / logits.abs().max(1).values).numpy()  # the top two's gap, relative
    assert flipped.mean() <= 0.01 and (margin[flipped] <= np.quantile(margin, 0.1)).all()

    report = evaluate_artifact(scaled_artifact, test, BF16, variants=False)
    reference = evaluate_artifact(plain_artifact, test, BF16, variants=False)
    assert report["oa"] == pytest.approx(reference["oa"], abs=0.01)
    # the scaled layer's bf16 weights round apart from the unscaled ones by up to 2^-8 of each
    assert report["loss_before_temperature"] == pytest.approx(reference["loss"], rel=0.02)
    assert np.isfinite([report["loss"], report["ece"], report["ece_before_temperature"]]).all()
