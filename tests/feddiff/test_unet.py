"""FedDiff's denoising U-Net: shapes, zero-initialised output, frequency conditioning, bf16."""

import pytest
import torch

from fedrs.feddiff.diffusion import LinearSchedule, diffusion_loss
from fedrs.feddiff.unet import DiffusionUNet, FrequencyBlock, UNetSpec


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


@pytest.mark.parametrize("complex_fft", [True, False])
def test_unet_trains_under_bf16_autocast(complex_fft):
    unet = DiffusionUNet(UNetSpec(in_channels=5, base_channels=8, complex_fft=complex_fft))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(unet, LinearSchedule(50), torch.randn(2, 5, 8, 8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
