"""FedDiff stage 1 and 2: the denoising U-Net of one modality trained by FedAvg over the clients
holding it (L1 noise loss on the U-Net's input size), and the diffusion features it yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.compute import ComputePolicy
from fedrs.feddiff.diffusion import (
    LinearSchedule,
    denoising_report,
    diffusion_features,
    diffusion_loss,
    probe_timesteps,
)
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.algorithm_base import Algorithm, Modalities, inference_config
from fedrs.federated.local import Batch, Objective, TrainConfig, inference_batches
from fedrs.patching import resize_patches


def unet_input(patches: Any, size: int) -> torch.Tensor:
    """Patches at the U-Net's input size (the one documented resize of fedrs.patching)."""
    return resize_patches(torch.as_tensor(np.asarray(patches), dtype=torch.float32), size)


def schedule_of(spec: UNetSpec) -> LinearSchedule:
    return LinearSchedule(spec.steps, spec.beta_start, spec.beta_end)


def diffusion_feature_bundle(unet: DiffusionUNet, patches: np.ndarray, timesteps: list[int],
                             seed: int, policy: ComputePolicy | None = None, batch_size: int = 512) -> np.ndarray:
    """Features [N, 2C·len(timesteps), 4, 4] (float32) of P×P patches.

    The noise depends only on ``seed`` and the timestep — not on a patch's position in a batch —
    so a pixel gets the same features whether it is scored, mapped or cached."""
    policy = policy or ComputePolicy(torch.device("cpu"))
    unet.to(policy.device).eval()
    schedule = schedule_of(unet.spec)
    out = []
    for sl in inference_batches(len(patches), batch_size):
        x0 = unet_input(patches[sl], unet.spec.size).to(policy.device)
        with torch.inference_mode(), policy.autocast():
            out.append(diffusion_features(unet, schedule, x0, list(timesteps), seed).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@dataclass(frozen=True)
class DiffusionAlgorithm(Algorithm):
    """FedAvg of one modality's denoising U-Net over the clients holding that modality."""

    def owner(self, parameter: str) -> str | None:
        return None  # everything is shared among the holders; eligibility keeps the others out

    @property
    def modality(self) -> str:
        return self.modalities[0]

    def build_model(self, spec: dict[str, Any]) -> DiffusionUNet:
        return DiffusionUNet(UNetSpec.from_dict(spec))

    def client_objective(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                         config: dict[str, Any], rnd: int = 1,
                         partner: dict[str, torch.Tensor] | None = None) -> Objective:
        assert isinstance(model, DiffusionUNet)
        schedule = schedule_of(model.spec)
        x0 = unet_input(data[self.modality], model.spec.size)

        def loss(batch: Batch) -> torch.Tensor:
            return diffusion_loss(model, schedule, batch.take(x0), batch.generator)

        return Objective(len(x0), loss, TrainConfig.from_dict(config), min_batch=1)

    def probe_inputs(self, model: nn.Module, data: dict[str, Any], timesteps: tuple[int, ...], seed: int,
                     config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The linear probe's inputs of every pixel (``fedrs.feddiff.probe``): the raw patch's bands
        and the middle-block features at each timestep, each averaged over the positions (float64)."""
        assert isinstance(model, DiffusionUNet)
        patches = np.asarray(data[self.modality])
        raw = unet_input(patches, model.spec.size).double().mean(dim=(2, 3))
        policy = TrainConfig.from_dict(inference_config(config)).policy()
        bundle = torch.from_numpy(diffusion_feature_bundle(model, patches, list(timesteps), seed, policy)).double()
        width = bundle.shape[1] // len(timesteps)
        return {"raw": raw, **{f"t{t}": bundle[:, i * width:(i + 1) * width].mean(dim=(2, 3))
                               for i, t in enumerate(timesteps)}}

    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: Modalities | None = None) -> dict[str, Any]:
        """Held-out denoising on up to 2,048 patches (the validation split's, each round), with fixed
        noise: the L1 noise loss, and the x0-reconstruction PSNR and its gain over predicting no
        noise at a few timesteps (``denoising_report``)."""
        assert isinstance(model, DiffusionUNet)
        policy = TrainConfig.from_dict(inference_config(config)).policy()
        model.to(policy.device).eval()
        x0 = unet_input(np.asarray(test[self.modality])[:2048], model.spec.size).to(policy.device)
        schedule = schedule_of(model.spec)
        with torch.inference_mode(), policy.autocast():
            report = {"l1": float(diffusion_loss(model, schedule, x0, torch.Generator().manual_seed(0)))}
            report.update(denoising_report(model, schedule, x0, probe_timesteps(schedule.steps),
                                           torch.Generator().manual_seed(1)))
        return report
