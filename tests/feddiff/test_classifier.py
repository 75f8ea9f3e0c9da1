"""FedDiff's dual-branch classifier: FR blocks, heads, outputs, loss terms, centre path."""

import pytest
import torch

from fedrs.feddiff.classifier import (
    FR,
    FedDiffClassifier,
    FedDiffSpec,
    Head,
    conv_weight_penalty,
    feddiff_loss,
    feddiff_loss_terms,
    unimodal_cross_entropy,
)


def spec(**kw):
    return FedDiffSpec(hsi_channels=7, lidar_channels=1, hsi_feature_channels=32, lidar_feature_channels=32,
                       num_classes=5, **kw)


def test_fr_block_and_heads():
    a, b = torch.randn(3, 128, 2, 2), torch.randn(3, 128, 2, 2)
    assert FR()(a, b).shape == (3, 128, 2, 2)
    assert Head(5)(a).shape == (3, 5)


@pytest.mark.parametrize("kw", [{}, {"use_diffusion": False}, {"bilateral": False}])
def test_classifier_outputs(kw):
    model = FedDiffClassifier(spec(**kw)).eval()
    outs = model(torch.randn(3, 7, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 32, 4, 4), torch.randn(3, 32, 4, 4))
    assert len(outs) == 3 and all(o.shape == (3, 5) for o in outs)


def test_diffusion_features_on_the_lidar_branch_alone():
    model = FedDiffClassifier(spec(diffusion_modalities=("lidar",))).eval()
    assert not hasattr(model.hsi_branch, "stem") and hasattr(model.lidar_branch, "stem")
    # the HSI branch needs no features; the LiDAR branch refuses to run without its own
    outs = model(torch.randn(3, 7, 8, 8), torch.randn(3, 1, 8, 8), lidar_features=torch.randn(3, 32, 4, 4))
    assert all(o.shape == (3, 5) for o in outs)
    with pytest.raises(ValueError, match="needs the diffusion features"):
        model(torch.randn(3, 7, 8, 8), torch.randn(3, 1, 8, 8), hsi_features=torch.randn(3, 32, 4, 4))
    assert not spec(use_diffusion=False, diffusion_modalities=("lidar",)).diffuses("lidar")
    with pytest.raises(ValueError, match=r"diffusion_modalities \['lidar', 'dsm'\]"):
        spec(diffusion_modalities=("lidar", "dsm"))


def test_loss_with_a_weight_term_that_acts():
    torch.manual_seed(0)
    model = FedDiffClassifier(spec())
    outs = model(torch.randn(4, 7, 8, 8), torch.randn(4, 1, 8, 8), torch.randn(4, 32, 4, 4), torch.randn(4, 32, 4, 4))
    y = torch.tensor([0, 1, 2, 3])
    plain = feddiff_loss(outs, y)
    with_decay = feddiff_loss(outs, y, model, weight_decay=0.01)
    assert with_decay.item() == pytest.approx(plain.item() + 0.01 * conv_weight_penalty(model).item(), rel=1e-5)
    with_decay.backward()
    conv = model.hsi_branch.layer1[0].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0


def test_a_detached_consistency_target_keeps_o1_out_of_the_consistency():
    """joint: the heads' consistency pulls o1 toward o2 and o3; detached: the same value, but o1's
    gradient is the cross-entropy's alone while o2 and o3 still learn to match o1."""
    torch.manual_seed(0)
    base = [torch.randn(6, 5) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    grads, values = {}, {}
    for target in ("joint", "detached"):
        outs = [o.clone().requires_grad_(True) for o in base]
        ce, consistency = feddiff_loss_terms(tuple(outs), y, detach_target=target == "detached")
        values[target] = (ce.item(), consistency.item())
        consistency.backward()
        grads[target] = [o.grad for o in outs]
    assert values["joint"] == values["detached"]
    assert grads["joint"][0].abs().sum() > 0
    assert grads["detached"][0] is None  # o1 takes no gradient from the consistency
    for k in (1, 2):
        torch.testing.assert_close(grads["detached"][k], grads["joint"][k])
    from fedrs.feddiff.algorithm import FedDiffTraining

    with pytest.raises(ValueError, match="consistency_target 'stop'"):  # the config is where it is checked
        FedDiffTraining(consistency_target="stop")


def test_unimodal_cross_entropy_scores_the_unimodal_heads_against_the_labels():
    y = torch.tensor([0, 1, 2])
    right = torch.eye(5)[y] * 20.0
    wrong = torch.eye(5)[(y + 1) % 5] * 20.0
    assert unimodal_cross_entropy((wrong, right, right), y).item() < 1e-6  # o1 takes no part
    assert unimodal_cross_entropy((right, wrong, right), y).item() == pytest.approx(20.0, abs=1e-3)
    assert unimodal_cross_entropy((right, wrong, wrong), y).item() == pytest.approx(40.0, abs=1e-3)


def test_a_spectral_stem_maps_the_bands_pointwise_before_the_hsi_branch():
    torch.manual_seed(0)
    plain, stemmed = FedDiffClassifier(spec(use_diffusion=False)), FedDiffClassifier(spec(use_diffusion=False,
                                                                                          spectral_stem=4))
    assert not hasattr(plain.hsi_branch, "spectral") and not hasattr(stemmed.lidar_branch, "spectral")
    assert stemmed.hsi_branch.layer1[0].in_channels == 4 and plain.hsi_branch.layer1[0].in_channels == 7
    extra = sum(p.numel() for p in stemmed.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (7 * 4 + 4 + 2 * 4) + (4 - 7) * 16 * 9  # the 1×1 conv and its BatchNorm; a narrower layer1
    stemmed.eval()
    hsi = torch.randn(3, 7, 8, 8)
    outs = stemmed(hsi, torch.randn(3, 1, 8, 8))
    assert all(o.shape == (3, 5) for o in outs)
    # pointwise: a band pattern moved to another position gives the stem's same output there
    mapped = stemmed.hsi_branch.spectral(hsi)
    rolled = stemmed.hsi_branch.spectral(hsi.roll(1, dims=3))
    torch.testing.assert_close(rolled, mapped.roll(1, dims=3))
    with pytest.raises(ValueError, match="spectral_stem -1"):
        spec(spectral_stem=-1)


def test_the_centre_path_feeds_the_classified_pixel_into_cnn():
    from fedrs.feddiff.classifier import PatchBranch

    torch.manual_seed(0)
    plain, centred = PatchBranch(7, 32, True), PatchBranch(7, 32, True, centre_path=True)
    extra = sum(p.numel() for p in centred.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 7 * 128 + 128 + 2 * 128  # a 1×1 conv and its BatchNorm
    centred.eval()
    patch, features = torch.zeros(1, 7, 8, 8), torch.zeros(1, 32, 4, 4)
    cnn0, _ = centred(patch, features)
    patch[:, :, 3:5, 3:5] = 1.0  # the four pixels around the centre of the 8×8 resize
    cnn1, _ = centred(patch, features)
    centred.centre[0].weight.data.zero_()
    cnn_without, _ = centred(patch, features)
    assert not torch.allclose(cnn1, cnn_without)  # the centre path contributes to cnn_m
    assert not torch.allclose(cnn0, cnn1)


def test_dropout_on_the_fused_maps_acts_in_training_only_and_adds_no_parameter():
    torch.manual_seed(0)
    plain = FedDiffClassifier(spec(use_diffusion=False))
    torch.manual_seed(0)
    dropped = FedDiffClassifier(spec(use_diffusion=False, dropout=0.5))
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for a, b in zip(plain.state_dict().values(), dropped.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same initialisation: dropout draws nothing while the model is built
    hsi, lidar = torch.randn(6, 7, 8, 8), torch.randn(6, 1, 8, 8)
    for model in (plain, dropped):
        model.eval()
    for a, b in zip(plain(hsi, lidar), dropped(hsi, lidar), strict=True):
        assert torch.equal(a, b)  # evaluation: no dropout
    plain.train()
    dropped.train()
    torch.manual_seed(1)
    first = dropped(hsi, lidar)[0]
    torch.manual_seed(2)
    assert not torch.equal(first, dropped(hsi, lidar)[0])  # training: a fresh mask each pass
    # p = 0 draws no random numbers: the global stream is where it was
    torch.manual_seed(3)
    plain(hsi, lidar)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(1))
    with pytest.raises(ValueError, match="dropout 1.0; expected a probability in"):
        spec(dropout=1.0)
