"""FedDiff's torch modules: DDPM schedule, U-Net with frequency conditioning, fusion classifier."""

import pytest
import torch

from fedrs.models.diffusion import LinearSchedule, diffusion_features, diffusion_loss
from fedrs.models.fusion import FR, FedDiffClassifier, FedDiffSpec, Head, conv_weight_penalty, feddiff_loss
from fedrs.models.unet import DiffusionUNet, FrequencyBlock, UNetSpec


def test_schedule_against_closed_forms():
    s = LinearSchedule(500, 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.betas[1].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / 499)
    t = 123
    expected = 1.0
    for i in range(t + 1):
        expected *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / 499)
    assert s.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-10)


def test_q_sample_closed_form():
    s = LinearSchedule(500)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 250, 499])
    xt = s.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = s.alphas_cumprod[step].item()
        assert torch.allclose(xt[i], a ** 0.5 * x0[i] + (1 - a) ** 0.5 * noise[i], atol=1e-6)


@pytest.mark.parametrize("bands", [1, 7, 63, 144])
def test_unet_shapes_for_odd_band_counts(bands):
    unet = DiffusionUNet(UNetSpec(in_channels=bands, base_channels=16))
    x, t = torch.randn(2, bands, 8, 8), torch.tensor([3, 400])
    assert unet(x, t).shape == x.shape
    assert unet.middle_features(x, t).shape == (2, 32, 4, 4)  # 2C at 4×4


def test_output_conv_starts_at_zero():
    unet = DiffusionUNet(UNetSpec(in_channels=5, base_channels=8))
    assert torch.count_nonzero(unet(torch.randn(2, 5, 8, 8), torch.tensor([1, 2]))) == 0


def test_frequency_block_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4)
    real_only = FrequencyBlock(8, complex_fft=False)
    # the official behaviour, by hand: real part of the spectrum → 1×1 conv → inverse FFT, real part
    expected = torch.fft.ifft2(real_only.spectral(torch.fft.fft2(x, norm="ortho").real), norm="ortho").real
    expected = real_only.spatial(expected)
    expected = expected + real_only.refine(expected)
    assert torch.allclose(real_only(x), expected, atol=1e-5)
    complex_block = FrequencyBlock(8, complex_fft=True)
    assert complex_block.spectral.in_channels == 16 and complex_block(x).shape == x.shape
    # with an identity 1×1 mixing, the complex path returns the input exactly (before the 3×3 conv)
    with torch.no_grad():
        complex_block.spectral.weight.copy_(torch.eye(16)[:, :, None, None])
        complex_block.spectral.bias.zero_()
    spectrum = torch.fft.fft2(x, norm="ortho")
    mixed = complex_block.spectral(torch.cat([spectrum.real, spectrum.imag], 1))
    assert torch.allclose(torch.fft.ifft2(torch.complex(*mixed.chunk(2, 1)), norm="ortho").real, x, atol=1e-5)


def test_diffusion_loss_and_seeded_features():
    s = LinearSchedule(50)
    unet = DiffusionUNet(UNetSpec(in_channels=3, base_channels=8))
    x0 = torch.randn(4, 3, 8, 8)
    loss = diffusion_loss(unet, s, x0, torch.Generator().manual_seed(0))
    assert loss.item() > 0 and loss.requires_grad
    f1 = diffusion_features(unet.eval(), s, x0, [5, 10, 40], seed=1)
    f2 = diffusion_features(unet, s, x0, [5, 10, 40], seed=1)
    assert f1.shape == (4, 3 * 16, 4, 4) and torch.equal(f1, f2)
    with pytest.raises(ValueError, match="outside"):
        diffusion_features(unet, s, x0, [50], seed=1)


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


@pytest.mark.parametrize("complex_fft", [True, False])
def test_unet_trains_under_bf16_autocast(complex_fft):
    unet = DiffusionUNet(UNetSpec(in_channels=5, base_channels=8, complex_fft=complex_fft))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(unet, LinearSchedule(50), torch.randn(2, 5, 8, 8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)


def test_the_centre_path_feeds_the_classified_pixel_into_cnn():
    from fedrs.models.fusion import PatchBranch

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
