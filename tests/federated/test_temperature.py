"""Temperature scaling: the fit from summed cross-entropies, the scaled last layer, the pass at the
end of a federated run (clients' curves added as the server's own), and what the evaluation reports."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrs.evaluation import evaluate_artifact
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.local import CrossEntropyTally
from fedrs.federated.server.loop import run_rounds, start_run
from fedrs.federated.temperature import TemperatureConfig, apply_temperature, fit_temperature, scale_layer
from fedrs.metrics import CROSS_ENTROPY_BY_TEMPERATURE, expected_calibration_error
from fedrs.results import artifact, temperature_of
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config


def overconfident(n=4000, classes=5, factor=3.0, seed=0):
    """Logits whose softmax is the true class distribution, multiplied by ``factor`` (over-confident
    by that temperature), with labels drawn from the true distribution."""
    g = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(n, classes, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(F.softmax(calibrated, dim=1), 1, generator=g)[:, 0]
    return calibrated * factor, labels.numpy()


def tally_of(logits, labels, temperatures=(), batch=512, calibration=False):
    tally = CrossEntropyTally(labels, tuple(temperatures), calibration_by_temperature=calibration)
    for start in range(0, len(labels), batch):
        tally.add(logits[start:start + batch], slice(start, start + batch))
    return tally


def test_the_fit_recovers_the_temperature_that_made_logits_overconfident():
    logits, labels = overconfident(factor=3.0)
    grid = TemperatureConfig().grid()
    tally = tally_of(logits, labels, grid)
    temperature, inside = fit_temperature(grid, tally.by_temperature)
    assert inside and temperature == pytest.approx(3.0, rel=0.1)
    # the fitted T lowers the cross-entropy and the calibration error of the same pixels
    scaled = tally_of(logits / temperature, labels)
    assert scaled.mean < tally.mean - 0.1 and scaled.ece < tally.ece / 2
    # an under-confident model gets T < 1
    soft, soft_labels = overconfident(factor=0.5, seed=1)
    low, _ = fit_temperature(grid, tally_of(soft, soft_labels, grid).by_temperature)
    assert low == pytest.approx(0.5, rel=0.15)


def test_the_sums_at_each_temperature_are_the_cross_entropy_of_the_divided_logits():
    logits, labels = overconfident(n=300, factor=2.0)
    tally = tally_of(logits, labels, (0.5, 1.0, 4.0), batch=64, calibration=True)  # batches add up
    target = torch.as_tensor(labels)
    for i, t in enumerate((0.5, 1.0, 4.0)):
        assert tally.by_temperature[i] == pytest.approx(float(F.cross_entropy(logits / t, target, reduction="sum")))
    assert tally.by_temperature[1] == pytest.approx(tally.total, rel=1e-6)
    np.testing.assert_allclose(tally.bins_by_temperature[1], tally.bins)
    assert expected_calibration_error(tally.bins) == tally.ece
    # a client's curve (what it sends) gathers no bins per temperature: the same curve, no binning
    curve = tally_of(logits, labels, (0.5, 1.0, 4.0), batch=64)
    np.testing.assert_array_equal(curve.by_temperature, tally.by_temperature)
    assert not curve.bins_by_temperature.any() and np.array_equal(curve.bins, tally.bins)


def test_a_minimum_at_the_grid_end_is_reported_and_the_refinement_stays_between_neighbours():
    grid = (0.5, 1.0, 2.0, 4.0)
    assert fit_temperature(grid, np.array([4.0, 3.0, 2.0, 1.0])) == (4.0, False)
    assert fit_temperature(grid, np.array([1.0, 2.0, 3.0, 4.0])) == (0.5, False)
    # a parabola in log T with its vertex at log 1.5: found exactly
    log_grid = np.log(grid)
    t, inside = fit_temperature(grid, (log_grid - np.log(1.5)) ** 2)
    assert inside and t == pytest.approx(1.5)
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(grid, np.array([1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(ValueError, match="3 losses for 4 temperatures"):
        fit_temperature(grid, np.ones(3))


@pytest.mark.parametrize("settings, message", [
    ({"lowest": 1.5}, "T = 1, the model as trained, must lie inside"),
    ({"highest": 0.9}, "must lie inside"),
    ({"points": 2}, "at least 3"),
    ({"spread": 2}, "spread"),
])
def test_bad_temperature_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        TemperatureConfig.from_dict(settings)


def test_the_scaled_layer_divides_the_logits_exactly_enough():
    layer = torch.nn.Conv2d(8, 5, 1)
    x = torch.randn(6, 8, 1, 1)
    weight, bias = scale_layer(layer.weight.detach(), layer.bias.detach(), 2.5)
    assert torch.allclose(F.conv2d(x, weight, bias), layer(x).detach() / 2.5, atol=1e-6)
    with pytest.raises(ValueError, match="expected > 0"):
        scale_layer(weight, bias, 0.0)


def test_a_diverged_curve_fits_nothing_and_leaves_the_layer():
    """A non-finite curve (NaN logits) is no reason to fail a run at its end: the state stays."""
    grid = (0.5, 1.0, 2.0)
    state = {"head.weight": torch.ones(3, 4), "head.bias": torch.ones(3)}
    assert apply_temperature(state, "head", grid, np.array([1.0, np.nan, 2.0])) == {}
    assert torch.equal(state["head.weight"], torch.ones(3, 4))
    fitted = apply_temperature(state, "head", grid, np.array([3.0, 2.0, 1.0]))  # lowest at the grid's end
    assert fitted["temperature"] == 2.0 and not fitted["temperature_inside_grid"]
    assert torch.equal(state["head.bias"], torch.full((3,), 0.5))


def _feddiff(fed, **overrides):
    return config(fed, algorithm="feddiff", min_clients=2, num_rounds=2, client_data_dirs=[fed["features_dir"]],
                  eval_samples=None, **overrides)


@pytest.mark.heavy(20)
def test_a_federated_run_ends_by_dividing_the_last_layer_by_the_fitted_temperature(tiny_split_federation):
    """FedDiff's sites score their validation pixels at every temperature; the server adds their
    curves and scales head1's last convolution. Nothing else changes: not the training, not a class."""
    fed = tiny_split_federation
    cal = {"virtual_per_class": 20, "steps": 50}
    plain_cfg = _feddiff(fed, validation="clients", calibration=cal)
    plain = run_rounds(FakeGrid(4), plain_cfg, RoundsJob(plain_cfg, fed["test"]).validation, 4)
    grid = FakeGrid(4)
    cfg = _feddiff(fed, validation="clients", calibration=cal, temperature={})
    scaled = run_rounds(grid, cfg, RoundsJob(cfg, fed["test"]).validation, 4)
    last, before = scaled["history"][-1], plain["history"][-1]
    temperature = last["temperature"]
    assert last["temperature_inside_grid"] and temperature != pytest.approx(1.0, abs=0.05)
    layer = "head1.net.7"
    changed = {k for k in plain["state"] if not torch.equal(plain["state"][k], scaled["state"][k])}
    assert changed == {f"{layer}.weight", f"{layer}.bias"}
    for name in changed:
        torch.testing.assert_close(scaled["state"][name], plain["state"][name] / temperature)
    # the classes stay; the cross-entropy falls from what the calibrated model scored
    for key in ("val_oa", "val_aa", "val_kappa"):
        assert last[key] == before[key] == last[f"{key}_before_temperature"]
    assert last["val_loss_before_temperature"] == pytest.approx(before["val_loss"], rel=1e-9)
    assert last["val_loss"] < last["val_loss_before_temperature"]
    # what the sites sent for it: one summed cross-entropy per temperature, beside the counts
    points = TemperatureConfig().points
    curves = [m.content["arrays"][CROSS_ENTROPY_BY_TEMPERATURE].numpy() for m in grid.received
              if m.metadata.message_type == "query.validation" and CROSS_ENTROPY_BY_TEMPERATURE in m.content["arrays"]]
    assert len(curves) == 2 and all(c.shape == (points,) for c in curves)  # one scorer per site
    # the server holding the same pixels fits the same temperature
    server_cfg = _feddiff(fed, validation="server", calibration=cal, temperature={})
    server = run_rounds(FakeGrid(4), server_cfg, fed["test"], 4)
    assert server["history"][-1]["temperature"] == pytest.approx(temperature, rel=1e-6)


def test_a_horizontal_run_fits_its_temperature_without_calibration(tiny_federation):
    """FedAvg, the server scoring: T scales the last Linear; the artefact carries it and the
    evaluation reports the test cross-entropy and ECE before it beside the (same) classes."""
    fed = tiny_federation
    plain = run_rounds(FakeGrid(3), config(fed, num_rounds=1), fed["test"], 3)
    out = run_rounds(FakeGrid(3), config(fed, num_rounds=1, temperature={"points": 41}), fed["test"], 3)
    last = out["history"][-1]
    assert "calibration_clients" not in last and last["temperature"] > 0
    assert last["val_loss"] <= last["val_loss_before_temperature"] + 1e-9
    assert last["val_oa"] == last["val_oa_before_temperature"] == plain["history"][-1]["val_oa"]
    spec = fed["spec"]
    scaled = artifact("fedavg", spec, ["hsi", "lidar"], out["state"], **temperature_of(out["history"]))
    unscaled = artifact("fedavg", spec, ["hsi", "lidar"], plain["state"])
    report = evaluate_artifact(scaled, fed["test"], {}, variants=False)
    reference = evaluate_artifact(unscaled, fed["test"], {}, variants=False)
    assert report["temperature"] == last["temperature"] and "temperature" not in reference
    assert report["confusion"] == reference["confusion"]
    assert report["loss_before_temperature"] == pytest.approx(reference["loss"], rel=1e-5)
    assert report["ece_before_temperature"] == pytest.approx(reference["ece"], abs=1e-6)
    assert 0 <= report["ece"] <= 1


@pytest.mark.parametrize("extra, message", [
    ({"secure_aggregation": {}, "compression": None}, "temperature with validation: clients under secure_aggregation"),
    # client-level DP refuses the clients' scoring itself, curves and all
    ({"privacy": {"noise_multiplier": 1.0, "clipping_norm": 1.0}}, "validation: clients with privacy"),
])
def test_temperature_refuses_to_send_a_clients_curve_outside_its_protection(tiny_federation, extra, message):
    fed = tiny_federation
    with pytest.raises(ValueError, match=message):
        start_run(FakeGrid(3), config(fed, validation="clients", temperature={}, **extra), fed["test"], 3)
    # under SecAgg+ the server may fit T on its own copy of the validation pixels
    if "secure_aggregation" in extra:
        start_run(FakeGrid(3), config(fed, validation="server", temperature={}, **extra), fed["test"], 3)


def test_a_diverged_models_scores_fall_in_no_calibration_bin():
    from fedrs.metrics import confidence_bin_sums

    bins = confidence_bin_sums(np.array([0.5, np.nan, 0.95]), np.array([1, 0, 0]), bins=10)
    assert bins[0].sum() == 2 and expected_calibration_error(bins) == pytest.approx((0.5 + 0.95) / 2)
    assert np.isnan(expected_calibration_error(confidence_bin_sums(np.array([np.nan]), np.array([1]))))
