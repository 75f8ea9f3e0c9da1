"""Classifier calibration: the clients' class statistics, their pooling, the retrained last layer,
the features each algorithm captures, and the pass at the end of a federated run."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrs.datasets import NpzDataset
from fedrs.feddiff.classifier import FedDiffClassifier
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.calibration import (
    STATISTICS,
    CalibrationConfig,
    calibrate_layer,
    class_feature_statistics,
    class_gaussians,
    client_minimum,
    client_statistics,
    clip_features,
    noised_statistics,
    pool_statistics,
    secure_scales,
    virtual_features,
    withhold_small_classes,
)
from fedrs.federated.local import TrainConfig
from fedrs.federated.noise import noise_generator
from fedrs.federated.secure import HELD_UPDATE, SecureAggregationConfig
from fedrs.federated.server import passes
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import run_rounds, start_run
from tests.federated.fake_grid import FakeGrid


def test_class_statistics_by_hand_and_additive():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = torch.tensor([0, 0, 2])
    s = class_feature_statistics(z, y, 3)
    assert s["count"].tolist() == [2.0, 0.0, 1.0]
    assert s["sum"].tolist() == [[4.0, 6.0], [0.0, 0.0], [5.0, 6.0]]
    assert s["outer"][0].tolist() == [[1 + 9, 2 + 12], [2 + 12, 4 + 16]]
    assert s["outer"][2].tolist() == [[25.0, 30.0], [30.0, 36.0]]
    # pooling two clients' statistics == the statistics of their pixels together
    rng = torch.Generator().manual_seed(0)
    za, zb = torch.randn(7, 4, generator=rng), torch.randn(5, 4, generator=rng)
    ya, yb = torch.tensor([0, 1, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 0, 1, 1])
    pooled = pool_statistics([class_feature_statistics(za, ya, 3), class_feature_statistics(zb, yb, 3)])
    whole = class_feature_statistics(torch.cat([za, zb]), torch.cat([ya, yb]), 3)
    assert all(torch.allclose(pooled[k], whole[k]) for k in whole)
    with pytest.raises(ValueError, match="no client sent"):
        pool_statistics([])


def test_class_gaussians_are_the_pooled_means_and_covariances():
    rng = torch.Generator().manual_seed(1)
    z = torch.randn(40, 3, generator=rng, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = torch.tensor([0] * 25 + [1] * 14 + [2])  # class 2 has one pixel: no covariance, no virtual features
    gaussians = class_gaussians(class_feature_statistics(z, y, 3), CalibrationConfig(ridge=0.0))
    assert sorted(gaussians) == [0, 1]
    for c in (0, 1):
        mean, cov = gaussians[c]
        assert torch.allclose(mean, z[y == c].mean(0))
        assert torch.allclose(cov, torch.cov(z[y == c].T))


def _biased_problem(seed=0):
    """Three well-separated classes in 8 dimensions and a last layer that never predicts class 2
    (as a site-averaged layer behaves towards a class one site lacks)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(3).repeat_interleave(100)
    z = centres[y] + torch.randn(300, 8, generator=g)
    weight = centres.clone()
    bias = torch.tensor([0.0, 0.0, -1e3])
    return z, y, weight, bias


def test_calibration_repairs_a_last_layer_biased_against_a_class():
    z, y, weight, bias = _biased_problem()
    before = ((z @ weight.T + bias).argmax(1) == y).float().mean()
    assert before < 0.7  # class 2 is never predicted
    pooled = pool_statistics([class_feature_statistics(z[:150], y[:150], 3),
                              class_feature_statistics(z[150:], y[150:], 3)])
    cfg = CalibrationConfig(virtual_per_class=100, steps=200, lr=0.5)
    new_w, new_b, report = calibrate_layer(weight, bias, pooled, cfg, seed=3)
    after = ((z @ new_w.T + new_b).argmax(1) == y).float().mean()
    assert after > 0.97 and report["loss_after"] < report["loss_before"]
    assert report["classes"] == 3 and report["virtual_features"] == 300
    again = calibrate_layer(weight, bias, pooled, cfg, seed=3)  # seeded: the same layer
    assert torch.equal(again[0], new_w) and torch.equal(again[1], new_b)
    # a 1×1 convolution's weight keeps its shape
    conv_w, _, _ = calibrate_layer(weight.reshape(3, 8, 1, 1), bias, pooled, cfg, seed=3)
    assert conv_w.shape == (3, 8, 1, 1) and torch.equal(conv_w.flatten(1), new_w)
    with pytest.raises(ValueError, match="takes 4 inputs per class but the clients sent 8"):
        calibrate_layer(torch.zeros(3, 4), bias, pooled, cfg, seed=3)


def test_a_class_nobody_sent_keeps_its_row_of_the_last_layer():
    """Without statistics of class 2 (every client withheld it), calibration must not train its logit
    down: its weights and bias stay, the other classes' move."""
    z, y, weight, bias = _biased_problem()
    keep = y != 2
    pooled = pool_statistics([class_feature_statistics(z[keep], y[keep], 3)])
    cfg = CalibrationConfig(virtual_per_class=100, steps=100, lr=0.5)
    new_w, new_b, report = calibrate_layer(weight, bias, pooled, cfg, seed=3)
    assert report["classes"] == 2
    assert torch.equal(new_w[2], weight[2]) and torch.equal(new_b[2], bias[2])
    assert not torch.equal(new_w[0], weight[0]) and not torch.equal(new_w[1], weight[1])


def test_bad_calibration_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="virtual_per_class 0"):
        CalibrationConfig(virtual_per_class=0)
    with pytest.raises(ValueError, match="lr -1"):
        CalibrationConfig(lr=-1)


def test_a_server_cannot_lower_the_clients_minimum_below_the_floor():
    """The minimum is the client's: a server asking for classes of one or two pixels is refused
    (the client replies with an error, sending nothing), and an organisation's node config may only
    raise what the server asks for."""
    for hostile in (1, 2):
        with pytest.raises(ValueError, match=f"min_client_pixels {hostile}; expected at least 3"):
            client_minimum({"min_client_pixels": hostile})
    assert client_minimum(None) == 5 and client_minimum({"min_client_pixels": 3}) == 3
    assert client_minimum({"min_client_pixels": 5}, node_floor=12) == 12 and client_minimum({}, node_floor=2) == 5


@pytest.mark.parametrize("name", ["fedavg", "fedcmi"])
def test_captured_features_times_the_last_layer_are_the_logits(name, tiny_federation):
    algorithm = get_algorithm(name)
    model = algorithm.build_model(tiny_federation["spec"])
    spec, rng = tiny_federation["spec"], np.random.default_rng(0)
    data = {"hsi": rng.standard_normal((10, spec["bands"], 5, 5)).astype(np.float32),
            "lidar": rng.standard_normal((10, spec["lidar_channels"], 5, 5)).astype(np.float32),
            "labels": rng.integers(0, spec["num_classes"], 10)}
    model.eval()
    z = algorithm.client_features(model, data, ("hsi", "lidar"), {})
    last = model.get_submodule(algorithm.require_calibration_layer())
    with torch.no_grad():
        logits = model(hsi=torch.as_tensor(data["hsi"]), lidar=torch.as_tensor(data["lidar"]))
    assert torch.allclose(F.linear(z, last.weight, last.bias), logits, atol=1e-5)
    assert algorithm.calibration_contributes(("hsi", "lidar"))
    assert not algorithm.calibration_contributes(("hsi",))  # its features are not the test pixels' features


def test_feddiff_captures_the_input_of_head1s_last_convolution(tiny_split_federation):
    spec = tiny_split_federation["spec"]
    algorithm = get_algorithm("feddiff")
    model = algorithm.build_model(spec)
    assert isinstance(model, FedDiffClassifier)
    rng = np.random.default_rng(0)
    n = 6
    data = {"hsi": rng.standard_normal((n, spec["hsi_channels"], 5, 5)).astype(np.float32),
            "hsi_features": rng.standard_normal((n, 16, 4, 4)).astype(np.float32),
            "labels": np.arange(n) % spec["num_classes"]}
    model.eval()
    with torch.no_grad():
        cnn, diff = model.lidar_branch(torch.randn(n, spec["lidar_channels"], 8, 8), torch.randn(n, 16, 4, 4))
    partner = {"cnn": cnn, "diff": diff}
    z = algorithm.client_features(model, data, ("hsi",), {}, partner=partner)
    from fedrs.feddiff.algorithm import branch_inputs

    with torch.no_grad():
        o1 = model.fuse(*model.hsi_branch(*branch_inputs(data, "hsi", model.spec)), cnn, diff)[0]
    last = model.get_submodule(algorithm.require_calibration_layer())
    assert algorithm.require_calibration_layer() == "head1.net.7"
    assert torch.allclose(F.linear(z, last.weight.flatten(1), last.bias), o1, atol=1e-5)
    assert algorithm.calibration_contributes(("hsi",))  # with the exchange it sees the fused features
    with pytest.raises(ValueError, match="partner"):
        algorithm.client_features(model, data, ("hsi",), {})


def _feddiff_config(fed, **overrides):
    base = dict(algorithm="feddiff", model=fed["spec"], train={"epochs": 1, "batch_size": 8}, num_rounds=2,
                min_clients=2, seed=5, partition_dir=fed["dir"], eval_samples=200, validation="server",
                client_data_dirs=[fed["features_dir"]], compression={"rank": 4, "quantize_bits": 8},
                downlink_compression={"rank": 4, "quantize_bits": 8}, exchange_compression={"rank": 4})
    return FederatedConfig.from_dict({**base, **overrides})


@pytest.mark.heavy(18)
def test_a_federated_run_ends_by_calibrating_only_the_last_layer(tiny_split_federation):
    fed = tiny_split_federation
    cal = {"virtual_per_class": 20, "steps": 50}
    plain = run_rounds(FakeGrid(4), _feddiff_config(fed), fed["test"], 4)
    grid = FakeGrid(4)
    calibrated = run_rounds(grid, _feddiff_config(fed, calibration=cal), fed["test"], 4)
    layer = "head1.net.7"
    # the withholding happens on the client: what left each sender has no class of 1–4 pixels in it
    sent = [m for m in grid.received if "arrays" in m.content and "count" in m.content.array_records["arrays"]]
    counts = [m.content.array_records["arrays"]["count"].numpy() for m in sent]
    assert len(counts) == 2 and all(((c == 0) | (c >= 5)).all() for c in counts) and any(c.any() for c in counts)
    assert any(0 < n < 5 for c in site_class_counts(fed["dir"]).values() for n in c)  # there was one to withhold
    changed = {k for k in plain["state"] if not torch.equal(plain["state"][k], calibrated["state"][k])}
    assert changed == {f"{layer}.weight", f"{layer}.bias"}  # the run itself is the same, the layer retrained
    last = calibrated["history"][-1]
    # one sender per site, each pixel once; a class a site holds fewer than 5 pixels of stays home
    assert last["calibration_clients"] == 2 and last["calibration_loss_after"] < last["calibration_loss_before"]
    assert last["calibration_pixels"] == sent_once_per_site(fed["dir"], minimum=5) > 0
    assert last["val_oa_before_calibration"] == plain["history"][-1]["val_oa"]
    assert "calibration_clients" not in calibrated["history"][0]
    # what went up: per-class count, sum and outer-product sum of the 64 features, dense float64
    classes = fed["spec"]["num_classes"]
    ups = [t for t in calibrated["traffic"] if t["payload"] == "calibration"]
    assert len(ups) == 2 and all(t["bytes_sent"] == t["bytes_dense"] == classes * (1 + 64 + 64 * 64) * 8
                                 for t in ups)
    # the pass relays the partner outputs uncoded (dense_exchange), the rounds coded
    features = [t for t in calibrated["traffic"] if t["payload"] == "features" and t["round"] == 2]
    coded = [t for t in plain["traffic"] if t["payload"] == "features" and t["round"] == 2]
    assert len(features) == len(coded) + 8 and all(t["bytes_sent"] < t["bytes_dense"] for t in coded)
    assert sum(t["bytes_sent"] == t["bytes_dense"] for t in features) == 8
    coded_pass = run_rounds(FakeGrid(4), _feddiff_config(fed, calibration={**cal, "dense_exchange": False}),
                            fed["test"], 4)
    assert all(t["bytes_sent"] < t["bytes_dense"] for t in coded_pass["traffic"] if t["payload"] == "features")
        # the pass's downloads: only the tensors changed since the statistics pass (BatchNorm buffers), raw
    downs = [t for t in calibrated["traffic"] if t["payload"] == "weights" and t["direction"] == "down"][-4:]
    assert all(0 < t["bytes_sent"] < t["bytes_dense"] / 20 for t in downs)
    # the downloads of the pass decode to the exact final weights: no codec error in the features
    again = run_rounds(FakeGrid(4), _feddiff_config(fed, calibration=cal), fed["test"], 4)
    assert all(torch.equal(again["state"][k], calibrated["state"][k]) for k in calibrated["state"])


def site_class_counts(partition_dir):
    """Training pixels per class at each site (both members of a site hold the same pixels)."""
    per_site = {}
    for path in sorted(Path(partition_dir).glob("client_*.npz")):
        bundle = NpzDataset(str(path)).load()
        per_site[int(bundle["site"])] = np.bincount(np.asarray(bundle["labels"]))
    return per_site


def sent_once_per_site(partition_dir, minimum):
    """The training pixels of every site's classes it holds at least ``minimum`` pixels of."""
    return float(sum(c[c >= minimum].sum() for c in site_class_counts(partition_dir).values()))


def test_a_horizontal_run_calibrates_from_its_multimodal_clients(tiny_federation):
    fed = tiny_federation
    cfg = FederatedConfig.from_dict(dict(algorithm="fedavg", model=fed["spec"], train={"epochs": 1, "batch_size": 8},
                                         num_rounds=1, min_clients=1, seed=5, partition_dir=fed["dir"],
                                         eval_samples=200, calibration={"steps": 20}))
    out = run_rounds(FakeGrid(3), cfg, fed["test"], 3)
    assert out["history"][-1]["calibration_clients"] == 3
    # when every client withholds every class, the run still ends, uncalibrated, and says so
    withheld = {**cfg.__dict__, "calibration": {"min_client_pixels": 10**6}}
    none = run_rounds(FakeGrid(3), FederatedConfig.from_dict(withheld), fed["test"], 3)
    plain = run_rounds(FakeGrid(3), FederatedConfig.from_dict({**cfg.__dict__, "calibration": None}), fed["test"], 3)
    assert none["history"][-1]["calibration_classes"] == 0 and none["history"][-1]["calibration_pixels"] == 0
    assert all(torch.equal(none["state"][k], plain["state"][k]) for k in plain["state"])


@pytest.mark.parametrize("extra, message", [
    ({"privacy": {"noise_multiplier": 1.0, "clipping_norm": 1.0}}, "no bounded sensitivity at the organisation"),
    ({"secure_aggregation": {}, "compression": None}, "needs calibration.feature_clip"),
])
def test_calibration_refuses_to_send_class_statistics_unprotected(tiny_split_federation, extra, message):
    fed = tiny_split_federation
    with pytest.raises(ValueError, match=message):
        start_run(FakeGrid(4), _feddiff_config(fed, calibration={}, **extra), fed["test"], 4)


def _fedavg_calibrated(fed, grid, **overrides):
    cfg = FederatedConfig.from_dict(dict(algorithm="fedavg", model=fed["spec"], train={"epochs": 1, "batch_size": 8},
                                         num_rounds=1, min_clients=1, seed=5, partition_dir=fed["dir"],
                                         eval_samples=200, validation="server", **overrides))
    return run_rounds(grid, cfg, fed["test"], 3)


def test_calibration_under_secagg_pools_the_same_sums_and_the_server_holds_no_clients(tiny_federation, monkeypatch):
    """The class statistics enter one more SecAgg+ sum, scaled by public bounds: the server pools the
    exact sum of what the clients hold up to SecAgg+'s rounding, calibrates from it, and no reply of
    the pass carries a client's statistics."""
    fed = tiny_federation
    cal = {"steps": 20, "virtual_per_class": 50, "feature_clip": 5.0}
    pooled = []

    def calibrate(weight, bias, sums, cfg, seed):  # what the server pooled, as it calibrates
        pooled.append(sums)
        return calibrate_layer(weight, bias, sums, cfg, seed)

    monkeypatch.setattr(passes, "calibrate_layer", calibrate)
    grid = FakeGrid(3)
    secure = _fedavg_calibrated(fed, grid, calibration=cal, secure_aggregation={})
    row = secure["history"][-1]
    assert row["calibration_clients"] == 3 and len(pooled) == 1
    held = [ctx.state.array_records[HELD_UPDATE].to_torch_state_dict() for ctx in grid.contexts.values()]
    scales = secure_scales(max(int(i["num_samples"]) for i in secure["clients"].values()), 5.0)
    secagg = SecureAggregationConfig()
    step = 2 * secagg.clipping_range / secagg.quantization_range  # one quantisation level, per client's share
    for k in STATISTICS:
        exact = sum(h[k] for h in held) * scales[k]
        error = float((pooled[0][k] - exact).abs().max())
        assert 0 < error <= 9 * step * scales[k], (k, error)  # went through the quantised protocol, and only that
    assert row["calibration_pixels"] == pytest.approx(float(pooled[0]["count"].sum()))
    assert row["calibration_loss_after"] < row["calibration_loss_before"]
    replies = [m for m in grid.received if m.metadata.message_type == "query.calibration"]
    assert len(replies) == 3 and all(not m.content.array_records for m in replies)
    assert all("num_samples" not in m.content.metric_records["metrics"] for m in replies)
    assert row["secagg_sums"] >= 2  # the round's sum and the pass's sum, counted with the last round


def test_clipped_features_bound_what_one_pixel_moves_and_fit_the_secure_range():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64) * 5
    clipped = clip_features(z, 2.0)
    assert float(clipped.norm(dim=1).max()) <= 2.0 + 1e-12
    short = z.norm(dim=1) < 2.0
    assert torch.equal(clipped[short], z[short])  # features inside the bound are left alone
    labels = torch.randint(0, 3, (40,), generator=g)
    stats = class_feature_statistics(clipped, labels, 3)
    scales = secure_scales(40, 2.0)
    assert all(float((stats[k] / scales[k]).abs().max()) <= 1.0 + 1e-12 for k in STATISTICS)
    # one pixel more moves (count, sum / R, outer / R²) by at most √3 — the sensitivity the noise is sized for
    one_more = clip_features(z[:1] * 100, 2.0)
    more = class_feature_statistics(torch.cat([clipped, one_more]), torch.cat([labels, labels[:1]]), 3)
    moved = torch.cat([(more["count"] - stats["count"]).flatten(), ((more["sum"] - stats["sum"]) / 2.0).flatten(),
                       ((more["outer"] - stats["outer"]) / 4.0).flatten()])
    assert float(moved.norm()) <= 3 ** 0.5 + 1e-9 and float(moved.norm()) > 1.7


def test_noised_statistics_have_the_stated_scale_stay_symmetric_and_are_not_reproducible():
    stats = {"count": torch.zeros(2000, dtype=torch.float64), "sum": torch.zeros(2000, 3, dtype=torch.float64),
             "outer": torch.zeros(2000, 3, 3, dtype=torch.float64)}
    noised = noised_statistics(stats, 2.0, 0.5, noise_generator())
    std = 0.5 * 3 ** 0.5
    assert float(noised["count"].std()) == pytest.approx(std, rel=0.08)
    assert float(noised["sum"].std()) == pytest.approx(std * 2.0, rel=0.08)
    assert float(noised["outer"][:, 0, 1].std()) == pytest.approx(std * 4.0, rel=0.08)
    assert torch.equal(noised["outer"], noised["outer"].transpose(1, 2))
    again = noised_statistics(stats, 2.0, 0.5, noise_generator())  # the OS's CSPRNG: a second draw differs
    assert not torch.allclose(again["count"], noised["count"])
    # with noise nothing is withheld (whether a class is sent would depend on one pixel)
    cfg = CalibrationConfig(feature_clip=2.0, noise_multiplier=0.5)
    sent = client_statistics(torch.ones(2, 3), torch.tensor([0, 0]), 2, cfg, minimum=5, noise=noise_generator())
    assert abs(float(sent["count"][0]) - 2) < 10 and float(sent["count"][1]) != 0
    with pytest.raises(ValueError, match="needs feature_clip"):
        CalibrationConfig(noise_multiplier=1.0)


def test_noised_class_sums_still_give_usable_gaussians():
    """Noised outer products can leave a covariance indefinite: its negative eigenvalues are raised
    to zero before the ridge, so virtual features can be drawn; exact sums are left as they were."""
    z, y, _, _ = _biased_problem()
    cfg = CalibrationConfig(feature_clip=4.0, noise_multiplier=2.0)
    stats = client_statistics(z, y, 3, cfg, minimum=5, noise=torch.Generator().manual_seed(1))
    gaussians = class_gaussians(stats, cfg)
    assert gaussians and all(float(torch.linalg.eigvalsh(cov).min()) > 0 for _, cov in gaussians.values())
    virtual_features(gaussians, 10, torch.Generator().manual_seed(0))  # Cholesky succeeds
    exact = class_feature_statistics(z, y, 3)
    plain = CalibrationConfig()
    for c, (mean, cov) in class_gaussians(exact, plain).items():
        n = float(exact["count"][c])
        expected = (exact["outer"][c] - n * torch.outer(mean, mean)) / (n - 1)
        expected = (expected + expected.T) / 2
        assert torch.allclose(cov - plain.ridge * float(expected.diagonal().mean()) * torch.eye(len(mean),
                              dtype=cov.dtype), expected)


def test_calibration_refuses_noised_partner_outputs(tiny_split_federation):
    fed = tiny_split_federation
    protection = {"exchange_privacy": {"clipping_norm": 1.0, "noise_multiplier": 0.1}}
    with pytest.raises(ValueError, match="noised partner outputs, which no test pixel sees"):
        start_run(FakeGrid(4), _feddiff_config(fed, calibration={}, **protection), fed["test"], 4)


def test_a_client_withholds_the_classes_it_holds_too_few_pixels_of():
    """Two pixels of a class give both pixels back from count, sum and outer-product sum: such a
    class must not leave the client; a class of five may."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    raw = class_feature_statistics(z, labels, 3)
    a, b = z[0], z[1]  # the attack on what would have gone up: mean ± the scatter's principal direction
    mean = raw["sum"][0] / 2
    values, vectors = torch.linalg.eigh(raw["outer"][0] - 2 * torch.outer(mean, mean))
    half_gap = vectors[:, -1] * values[-1].clamp_min(0).sqrt() / 2 ** 0.5
    found = {tuple((mean + half_gap).round(decimals=6).tolist()), tuple((mean - half_gap).round(decimals=6).tolist())}
    assert found == {tuple(a.round(decimals=6).tolist()), tuple(b.round(decimals=6).tolist())}
    sent = withhold_small_classes(raw, 5)
    assert sent["count"].tolist() == [0.0, 5.0, 0.0]
    assert not sent["sum"][0].any() and not sent["outer"][0].any()
    assert torch.equal(sent["outer"][1], raw["outer"][1]) and torch.equal(sent["sum"][1], raw["sum"][1])


def test_the_training_config_carries_no_operation_flags():
    """Which operation a message asks for is its message type, not a flag inside the training config."""
    for flag in ("calibration_only", "statistics_only"):
        with pytest.raises(ValueError, match="unknown keys"):
            TrainConfig.from_dict({flag: True})
