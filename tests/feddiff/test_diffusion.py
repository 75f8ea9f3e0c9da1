"""FedDiff's DDPM schedule, noising and loss, and the seeded diffusion features."""

import pytest
import torch

from fedrs.feddiff.diffusion import LinearSchedule, diffusion_features, diffusion_loss
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec


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


def test_the_denoising_measure_is_zero_for_no_learning_and_grows_with_knowledge_of_the_signal():
    from fedrs.feddiff.diffusion import denoising_report, probe_timesteps

    schedule = LinearSchedule(100)
    x0 = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    steps = probe_timesteps(schedule.steps)
    assert steps == [2, 10, 30, 60]

    class Nothing(torch.nn.Module):  # predicts no noise: the baseline of the gain
        def forward(self, xt, t):
            return torch.zeros_like(xt)

    class Knows(torch.nn.Module):  # knows the clean signal, so recovers the noise exactly
        def forward(self, xt, t):
            a = schedule.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
            b = schedule.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (xt - a * x0) / b

    nothing = denoising_report(Nothing(), schedule, x0, steps, torch.Generator().manual_seed(1))
    knows = denoising_report(Knows(), schedule, x0, steps, torch.Generator().manual_seed(1))
    assert all(abs(nothing[f"psnr_gain_t{s}"]) < 1e-9 for s in steps)
    assert all(knows[f"psnr_gain_t{s}"] > 20 for s in steps)
    # more noise, lower PSNR for the model that learned nothing
    assert [nothing[f"psnr_t{s}"] for s in steps] == sorted((nothing[f"psnr_t{s}"] for s in steps), reverse=True)
