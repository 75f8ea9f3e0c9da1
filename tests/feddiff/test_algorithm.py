"""FedDiff's federated parts: what crosses the network, ownership, a client update with a partner."""

import numpy as np
import pytest
import torch

from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.codec import CodecConfig
from fedrs.federated.wire import pack_tensors, payload_bytes, unpack_tensors

SPEC = {"hsi_channels": 6, "lidar_channels": 2, "hsi_feature_channels": 16, "lidar_feature_channels": 16,
        "num_classes": 4, "timesteps": [5], "feature_seed": 0}


def client(rng, modality, n=20):
    channels = 6 if modality == "hsi" else 2
    return {modality: rng.standard_normal((n, channels, 7, 7)).astype(np.float32),
            f"{modality}_features": rng.standard_normal((n, 16, 4, 4)).astype(np.float32),
            "labels": rng.integers(0, 4, n), "modalities": [modality]}


def test_the_exchange_carries_no_raw_patch(rng):
    alg = get_algorithm("feddiff")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    data = client(rng, "hsi")
    outputs = alg.client_exchange(model, data, ("hsi",), {})
    assert set(outputs) == {"cnn", "diff"}
    assert all(t.shape == (20, 128, 2, 2) for t in outputs.values())
    arrays, consts, dense, sent = pack_tensors(outputs, CodecConfig(rank=4, quantize_bits=8))
    # only low-rank, quantised factors of the branch outputs travel: nothing of patch or feature shape
    shapes = {a.numpy().shape for a in arrays.values()}
    assert shapes == {(20, 4), (4, 512)}
    assert all(a.numpy().dtype == np.uint8 for a in arrays.values())
    assert not any(s[1:] in {(6, 7, 7), (16, 4, 4)} for s in shapes)
    assert sent * 15 < dense  # 20 pixels: 19× smaller (more pixels, larger ratio)
    back = unpack_tensors(arrays, consts)
    assert back["cnn"].shape == (20, 128, 2, 2)


def test_branches_belong_to_their_modality(rng):
    alg = get_algorithm("feddiff")
    model = alg.build_model(SPEC)
    hsi_keys = alg.client_keys(model, ("hsi",))
    assert any(k.startswith("hsi_branch.") for k in hsi_keys) and not any(
        k.startswith("lidar_branch.") for k in hsi_keys
    )
    assert {"fr1.gate_col.weight", "head1.net.7.weight"} <= hsi_keys


def test_client_update_uses_the_partner_and_trains_only_its_side(rng):
    alg = get_algorithm("feddiff")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    hsi, lidar = client(rng, "hsi"), client(rng, "lidar")
    lidar["labels"] = hsi["labels"]  # the two holders of a site share pixels and labels
    partner = alg.client_exchange(model, lidar, ("lidar",), {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, metrics = alg.client_update(
        model, hsi, ("hsi",), {"epochs": 1, "batch_size": 8, "weight_term": 0.01}, seed=1, rnd=1, partner=partner
    )
    assert metrics["num_samples"] == 20 and np.isfinite(metrics["train_loss"])
    assert not any(k.startswith("lidar_branch.") for k in state)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.startswith("lidar_branch."))
    assert not torch.equal(state["fr1.gate_col.weight"], before["fr1.gate_col.weight"])


def test_an_augmented_client_update_is_seeded_and_turns_its_patches(rng):
    """With ``augment: dihedral`` the client trains on turned patches, features and partner maps; the
    same seed gives the same update, augmentation another one."""
    alg = get_algorithm("feddiff")
    hsi, lidar = client(rng, "hsi"), client(rng, "lidar")
    lidar["labels"] = hsi["labels"]

    def update(augment):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        partner = alg.client_exchange(model, lidar, ("lidar",), {})
        config = {"epochs": 1, "batch_size": 32, "augment": augment}
        return alg.client_update(model, hsi, ("hsi",), config, seed=1, rnd=1, partner=partner)[0]

    plain, turned, again = update("none"), update("dihedral"), update("dihedral")
    assert all(torch.equal(turned[k], again[k]) for k in turned)
    assert not torch.equal(turned["hsi_branch.layer1.0.weight"], plain["hsi_branch.layer1.0.weight"])


def test_an_augmented_pixel_keeps_its_patch_features_and_partner_maps_aligned(rng):
    """Inside the real client objective: every sample the HSI branch trains on is some pixel's patch
    under some symmetry g, and the features beside it and the partner's maps fused with it are that
    same pixel's, under the same g."""
    from fedrs.federated.local import dihedral

    alg = get_algorithm("feddiff")
    hsi, lidar = client(rng, "hsi", n=12), client(rng, "lidar", n=12)
    lidar["labels"] = hsi["labels"]
    hsi["hsi"] = rng.standard_normal((12, 6, 8, 8)).astype(np.float32)  # even side: the 2×2 maps turn exactly
    lidar["lidar"] = rng.standard_normal((12, 2, 8, 8)).astype(np.float32)
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    partner = alg.client_exchange(model, lidar, ("lidar",), {})
    seen: dict[str, list[torch.Tensor]] = {"patch": [], "features": [], "cnn": [], "diff": []}
    def record(_, args):
        seen["patch"].append(args[0].detach())
        seen["features"].append(args[1].detach())

    model.hsi_branch.register_forward_pre_hook(record)
    fuse = model.fuse

    def spy(cnn_h, diff_h, cnn_l, diff_l):
        seen["cnn"].append(cnn_l.detach())
        seen["diff"].append(diff_l.detach())
        return fuse(cnn_h, diff_h, cnn_l, diff_l)

    model.fuse = spy
    alg.client_update(model, hsi, ("hsi",), {"epochs": 2, "batch_size": 6, "augment": "dihedral"}, seed=3,
                      rnd=1, partner=partner)
    patches, elements = torch.as_tensor(hsi["hsi"]), torch.arange(8)
    found = set()
    for patch, features, cnn, diff in zip(*(torch.cat(v) for v in seen.values()), strict=True):
        matches = [(i, g) for i in range(12) for g in range(8)
                   if torch.equal(dihedral(patches[i:i + 1], elements[g:g + 1])[0], patch)]
        assert len(matches) == 1
        ((i, g),) = matches
        found.add(g)
        turn = elements[g:g + 1]
        assert torch.equal(features, dihedral(torch.as_tensor(hsi["hsi_features"][i:i + 1]), turn)[0])
        assert torch.equal(cnn, dihedral(partner["cnn"][i:i + 1], turn)[0])
        assert torch.equal(diff, dihedral(partner["diff"][i:i + 1], turn)[0])
    assert len(found) > 1  # turns were drawn


def test_single_modality_feddiff_needs_no_partner(rng):
    alg = get_algorithm("feddiff_lidar")
    assert not alg.exchanges_features and get_algorithm("feddiff").exchanges_features
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    data = client(rng, "lidar")
    o1, o2, o3 = model(lidar=torch.randn(3, 2, 8, 8), lidar_features=torch.randn(3, 16, 4, 4))
    assert o1.shape == (3, 4) and torch.equal(o1, o2) and torch.equal(o1, o3)
    state, metrics = alg.client_update(model, data, ("lidar",), {"epochs": 1, "batch_size": 8}, seed=0)
    assert np.isfinite(metrics["train_loss"]) and not any(k.startswith("hsi_branch.") for k in state)
    test = {**data, "num_classes": 4, "class_names": list("abcd")}
    assert 0.0 <= alg.evaluate(model, test, {})["oa"] <= 1.0


def test_centralized_feddiff_runs_both_branches_live(rng):
    alg = get_algorithm("feddiff_centralized")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    both = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, _ = alg.client_update(model, both, ("hsi", "lidar"), {"epochs": 1, "batch_size": 8}, seed=0)
    for prefix in ("hsi_branch.layer1.0.weight", "lidar_branch.layer1.0.weight", "fr1.gate_row.weight"):
        assert not torch.equal(state[prefix], before[prefix])


def _payload(alg, spec, modalities):
    model = alg.build_model(spec)
    keys = alg.client_keys(model, modalities)
    return payload_bytes({k: v for k, v in model.state_dict().items() if k in keys}), keys


def test_variants_send_only_what_they_train():
    alg = get_algorithm("feddiff")
    full, keys = _payload(alg, SPEC, ("hsi",))
    cf = SPEC["hsi_feature_channels"]
    # the diffusion stem (conv 3×3 → 512 + BN, conv 1×1 → 256 + BN; BN: weight, bias, running mean and
    # variance, and an int64 counter) and the 256 stem channels of the enhanced path's 1×1 conv
    stem = 4 * (cf * 512 * 9 + 512 + 4 * 512 + 512 * 256 + 256 + 4 * 256 + 128 * 256) + 2 * 8
    no_diffusion, nd_keys = _payload(alg, {**SPEC, "use_diffusion": False}, ("hsi",))
    assert full - no_diffusion == stem and not any(".stem." in k for k in nd_keys)
    # without the bilateral connection FR1 is not built: two 1×1 convs and two 3×3 gates of 128 channels
    fr = 4 * ((64 * 128 + 64) + (128 * 64 + 128) + 2 * (128 * 128 * 9 + 128))
    no_bilateral, nb_keys = _payload(alg, {**SPEC, "bilateral": False}, ("hsi",))
    assert full - no_bilateral == fr and not any(k.startswith("fr1.") for k in nb_keys)
    # a single-modality FedDiff holds its branch, its FR block and its head only
    _, hsi_keys = _payload(get_algorithm("feddiff_hsi"), SPEC, ("hsi",))
    assert {k.split(".")[0] for k in hsi_keys} == {"hsi_branch", "fr2", "head2"}
    _, lidar_keys = _payload(get_algorithm("feddiff_lidar"), SPEC, ("lidar",))
    assert {k.split(".")[0] for k in lidar_keys} == {"lidar_branch", "fr3", "head3"}


def test_a_model_that_uses_diffusion_features_refuses_to_run_without_them(rng):
    alg = get_algorithm("feddiff_centralized")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    both = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    bare = {k: v for k, v in both.items() if not k.endswith("_features")}
    with pytest.raises(ValueError, match="no hsi_features for these 20 pixels"):
        alg.client_update(model, bare, ("hsi", "lidar"), {"epochs": 1, "batch_size": 8}, seed=0)
    with pytest.raises(ValueError, match="no hsi_features"):
        alg.predict(model, bare, {})
    with pytest.raises(ValueError, match="needs the diffusion features"):
        model(hsi=torch.randn(2, 6, 8, 8), lidar=torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="has no hsi U-Net"):
        alg.prepare({"algorithm": "feddiff_centralized", "spec": SPEC, "unets": {}}, bare)
    # the FedFusion-like ablation has no stem and needs none
    plain = get_algorithm("feddiff_centralized").build_model({**SPEC, "use_diffusion": False})
    assert alg.predict(plain, bare, {}).shape == (20,)


def test_a_pixel_gets_the_same_features_wherever_it_is_computed(rng):
    torch.manual_seed(0)
    unet = get_algorithm("ddpm_hsi").build_model({"in_channels": 6, "base_channels": 8, "steps": 50})
    patches = rng.standard_normal((9, 6, 7, 7)).astype(np.float32)
    whole = diffusion_feature_bundle(unet, patches, [5, 20], seed=3, batch_size=4)
    for k in (0, 5, 8):  # alone, or at another position of another batch: one seeding rule
        np.testing.assert_allclose(
            diffusion_feature_bundle(unet, patches[k : k + 1], [5, 20], seed=3), whole[k : k + 1], rtol=1e-4, atol=1e-4
        )
    shifted = diffusion_feature_bundle(unet, patches[3:], [5, 20], seed=3, batch_size=2)
    np.testing.assert_allclose(shifted, whole[3:], rtol=1e-4, atol=1e-4)
    assert not np.allclose(diffusion_feature_bundle(unet, patches, [5, 20], seed=4), whole)


def test_present_classes_only_leaves_the_other_sites_classes_alone(rng):
    """A client holding classes {0, 1} of 4: with present_classes_only its update does not push the
    logits of classes 2 and 3 (its partner site's) down — the head's rows for them do not move."""
    alg = get_algorithm("feddiff_centralized")
    data = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    data["labels"] = rng.integers(0, 2, 20)
    moved = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        before = model.head1.net[-2].weight.detach().clone()  # the last 1×1 conv: one row per class
        alg.client_update(model, data, ("hsi", "lidar"), {"epochs": 1, "batch_size": 10, "weight_term": 0.0,
                                                          "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                                                          "present_classes_only": flag}, seed=0)
        moved[flag] = (model.head1.net[-2].weight.detach() - before).abs().flatten(1).sum(1)
    assert (moved[False][2:] > 0).all()
    assert torch.equal(moved[True][2:], torch.zeros(2)) and (moved[True][:2] > 0).all()


def test_the_consistency_target_reaches_the_client_update(rng):
    """Through a real client update: the detached target trains another model than the spec's loss,
    and a misspelt target is refused before any training."""
    alg = get_algorithm("feddiff_centralized")
    data = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    states = {}
    for target in ("joint", "detached"):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        alg.client_update(model, data, ("hsi", "lidar"), {"epochs": 1, "batch_size": 10, "optimizer": "sgd",
                                                          "consistency_target": target}, seed=0)
        states[target] = model.head1.net[-2].weight.detach().clone()
    assert not torch.allclose(states["joint"], states["detached"])
    with pytest.raises(ValueError, match="consistency_target 'both'"):
        alg.client_update(alg.build_model(SPEC), data, ("hsi", "lidar"), {"consistency_target": "both"}, seed=0)


def test_unimodal_cross_entropy_trains_the_unimodal_heads_on_the_labels(rng):
    """μ > 0 adds CE(o2) + CE(o3): the HSI-only head (head2) moves otherwise than under the spec's
    loss, and the client reports the unimodal heads' cross-entropy either way."""
    alg = get_algorithm("feddiff_centralized")
    data = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    states, reports = {}, {}
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        _, reports[mu] = alg.client_update(model, data, ("hsi", "lidar"), {"epochs": 1, "batch_size": 10,
                                                                            "optimizer": "sgd", "unimodal_ce": mu},
                                              seed=0)
        states[mu] = model.head2.net[-2].weight.detach().clone()
    assert not torch.allclose(states[0.0], states[1.0])
    assert reports[0.0]["unimodal_ce"] > 0 and reports[1.0]["unimodal_ce"] > 0
    with pytest.raises(ValueError, match="unimodal_ce -1"):
        alg.client_update(alg.build_model(SPEC), data, ("hsi", "lidar"), {"unimodal_ce": -1.0}, seed=0)


def test_logit_adjustment_moves_the_clients_prior_into_its_logits(rng):
    from fedrs.feddiff.algorithm import prior_adjustment

    labels = torch.tensor([0] * 15 + [1] * 5)  # of 4 classes: 2 and 3 never seen, floor 0.5 / 20
    torch.testing.assert_close(prior_adjustment(labels, 4, 1.0), torch.tensor([0.75, 0.25, 0.025, 0.025]).log())
    torch.testing.assert_close(prior_adjustment(labels, 4, 0.5), 0.5 * torch.tensor([0.75, 0.25, 0.025, 0.025]).log())
    # in a client update: the prior already explains much of the labels, so the adjusted cross-entropy
    # the client reports is lower, and the update differs
    alg = get_algorithm("feddiff_centralized")
    data = {**client(rng, "hsi"), **{k: v for k, v in client(rng, "lidar").items() if k != "labels"}}
    data["labels"] = labels.numpy()
    states, losses = {}, {}
    for tau in (0.0, 1.0):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        states[tau], metrics = alg.client_update(model, data, ("hsi", "lidar"),
                                                 {"epochs": 1, "batch_size": 20, "weight_term": 0.0,
                                                  "logit_adjustment": tau}, seed=0)
        losses[tau] = metrics["ce"]
    assert losses[1.0] < losses[0.0] - 0.3
    assert not torch.equal(states[1.0]["head1.net.7.weight"], states[0.0]["head1.net.7.weight"])
