"""FedDiff on the shared runtime (../shared/spec/feddiff.md): plain functions and two algorithms.

Stage 1 — ``ddpm_hsi`` / ``ddpm_lidar``: the U-Net of a modality trained by FedAvg over the clients
holding it (L1 noise loss on 8×8 patches).
Stage 2 — ``diffusion_feature_bundle``: middle-block features at ``timesteps`` with seeded noise,
computed for a client's own pixels with its modality's global U-Net.
Stage 3 — ``feddiff``: per round every sampled client sends its branch outputs (cnn_m, diff_m on its
own pixels) through the codec; the server relays them to the partner holding the other modality of
the same site; each client trains its branch and its copy of the fusion blocks and heads on its
live outputs plus the partner's (constant) ones; branches average over same-modality clients,
fusion and heads over all. Only compressed branch outputs and weights cross — never patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.federated.aggregation import State
from fedrs.federated.algorithms import ModalityAwareAlgorithm, register
from fedrs.federated.local import LocalTrainer, TrainConfig, iter_batches, resolve_device
from fedrs.metrics import classification_report
from fedrs.models.diffusion import LinearSchedule, diffusion_features, diffusion_loss
from fedrs.models.fusion import FedDiffClassifier, FedDiffSpec, feddiff_loss
from fedrs.models.unet import DiffusionUNet, UNetSpec
from fedrs.patching import resize_patches

MODALITIES = ("hsi", "lidar")


def unet_input(patches: Any, size: int = 8) -> torch.Tensor:
    """Patches at the U-Net's input size (the one documented resize of fedrs.patching)."""
    return resize_patches(torch.as_tensor(np.asarray(patches), dtype=torch.float32), size)


def schedule_of(spec: dict[str, Any]) -> LinearSchedule:
    return LinearSchedule(int(spec.get("steps", 500)), float(spec.get("beta_start", 1e-4)), float(spec.get("beta_end", 0.02)))


@torch.no_grad()
def diffusion_feature_bundle(unet: DiffusionUNet, spec: dict[str, Any], patches: np.ndarray, timesteps: list[int],
                             seed: int, batch_size: int = 512) -> np.ndarray:
    """Features [N, 2C·len(timesteps), 4, 4] of P×P patches; the noise depends only on ``seed``
    and the sample's batch, so an unchanged model and scene give identical features."""
    unet.eval()
    schedule = schedule_of(spec)
    out = []
    for start in range(0, len(patches), batch_size):
        x0 = unet_input(patches[start:start + batch_size], int(spec.get("size", 8)))
        out.append(diffusion_features(unet, schedule, x0, list(timesteps), seed + start).numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@dataclass(frozen=True)
class DiffusionAlgorithm(ModalityAwareAlgorithm):
    """Stage 1: FedAvg of one modality's denoising U-Net over the clients holding that modality."""

    def owner(self, parameter: str) -> str | None:
        return None  # everything is shared among the holders; eligibility keeps the others out

    @property
    def modality(self) -> str:
        return self.modalities[0]

    def build_model(self, spec: dict[str, Any]) -> DiffusionUNet:
        model = DiffusionUNet(UNetSpec.from_dict(spec))
        model.schedule = schedule_of(spec)  # T and β range travel with the model's spec
        return model

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: tuple[str, ...],
                      config: dict[str, Any], seed: int, rnd: int = 1) -> tuple[State, dict[str, float]]:
        cfg = TrainConfig.from_dict(config)
        device = resolve_device(cfg.device)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model.to(device).train()
        x0 = unet_input(data[self.modality])
        trainer = LocalTrainer(model, cfg)
        total, seen = 0.0, 0
        for _ in range(cfg.epochs):
            for idx in iter_batches(len(x0), cfg.batch_size, generator):
                total += trainer.step(diffusion_loss(model, model.schedule, x0[idx].to(device), generator)) * idx.size
                seen += idx.size
        trainer.close()
        return ({k: v.detach().cpu() for k, v in model.state_dict().items()},
                {"train_loss": total / max(seen, 1), "num_samples": int(len(x0))})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                 modalities: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Held-out denoising error (L1) on the test patches, with fixed noise."""
        model.eval()
        x0 = unet_input(np.asarray(test[self.modality])[:2048])
        return {"l1": float(diffusion_loss(model, model.schedule, x0, torch.Generator().manual_seed(0)))}


@dataclass(frozen=True)
class FedDiffAlgorithm(ModalityAwareAlgorithm):
    """Stage 3: the bilateral dual-branch classifier, trained with the feature exchange.

    A client holding one modality trains its branch with its site partner's relayed outputs; one
    holding both (centralized FedDiff) runs the whole model; the single-modality variants
    (``feddiff_hsi``, ``feddiff_lidar``) need no partner.
    """

    def owner(self, parameter: str) -> str | None:
        for modality in MODALITIES:
            if parameter.startswith(f"{modality}_branch."):
                return modality
        return None

    @property
    def exchanges_features(self) -> bool:  # type: ignore[override]
        return len(self.modalities) == 2  # a single-modality FedDiff has no partner to hear from

    def build_model(self, spec: dict[str, Any]) -> FedDiffClassifier:
        return FedDiffClassifier(FedDiffSpec.from_dict({**spec, "modalities": list(self.modalities)}))

    @staticmethod
    def _branch_inputs(data: dict[str, Any], modality: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A modality's 8×8 patches and diffusion features (if any), built once per call site:
        the resize is per sample, so batches index these instead of resizing again every epoch."""
        key = f"{modality}_features"
        features = torch.as_tensor(np.asarray(data[key]), dtype=torch.float32) if key in data else None
        return unet_input(data[modality]), features

    @torch.no_grad()
    def client_exchange(self, model: FedDiffClassifier, data: dict[str, Any], client_modalities: tuple[str, ...],
                        config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The client's branch outputs on its own pixels: all that its partner receives."""
        (modality,) = self.usable_modalities(client_modalities)
        branch = getattr(model, f"{modality}_branch").eval()
        cnn, diff = branch(*self._branch_inputs(data, modality))
        return {"cnn": cnn, "diff": diff}

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: tuple[str, ...],
                      config: dict[str, Any], seed: int, rnd: int = 1,
                      partner: dict[str, torch.Tensor] | None = None) -> tuple[State, dict[str, float]]:
        usable = self.usable_modalities(client_modalities)
        if partner is None and len(self.modalities) == 2 and len(usable) == 1:
            raise ValueError("feddiff: a client holding one modality needs its site partner's branch outputs")
        config = dict(config)
        weight_term = float(config.pop("weight_term", 0.01))
        cfg = TrainConfig.from_dict(config)
        device = resolve_device(cfg.device)
        keys = self.client_keys(model, client_modalities)
        trainable = {n for n, _ in model.named_parameters() if n in keys}
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model.to(device).train()
        trainer = LocalTrainer(model, cfg, trainable)
        conv_weights = [p for n, p in model.named_parameters() if n in trainable and p.ndim == 4]
        labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)
        if partner is not None and len(partner["cnn"]) != len(labels):
            raise ValueError(f"feddiff: partner sent {len(partner['cnn'])} outputs for {len(labels)} pixels")
        inputs = {m: self._branch_inputs(data, m) for m in usable}
        total, seen = 0.0, 0
        for _ in range(cfg.epochs):
            for idx in iter_batches(len(labels), cfg.batch_size, generator):
                if idx.size < 2:
                    continue
                live = {m: [None if t is None else t[idx].to(device) for t in inputs[m]] for m in usable}
                if partner is None:  # every branch this model has is live here
                    outs = model(**{m: v[0] for m, v in live.items()}, **{f"{m}_features": v[1] for m, v in live.items()})
                else:
                    (modality,) = usable
                    cnn, diff = getattr(model, f"{modality}_branch")(*live[modality])
                    other = partner["cnn"][idx].to(device), partner["diff"][idx].to(device)
                    outs = model.fuse(cnn, diff, *other) if modality == "hsi" else model.fuse(*other, cnn, diff)
                loss = feddiff_loss(outs, labels[idx].to(device))
                if weight_term:
                    loss = loss + weight_term * torch.stack([w.pow(2).sum() for w in conv_weights]).sum()
                total += trainer.step(loss) * idx.size
                seen += idx.size
        trainer.close()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in keys}
        return state, {"train_loss": total / max(seen, 1), "num_samples": int(len(labels))}

    def prepare(self, artifact: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Add diffusion features computed with the artefact's global U-Nets (server side)."""
        out = dict(data)
        spec = artifact["spec"]
        for modality in self.modalities:
            unet_entry = artifact.get("unets", {}).get(modality)
            if unet_entry is None or f"{modality}_features" in data:
                continue
            unet = DiffusionUNet(UNetSpec.from_dict(unet_entry["spec"]))
            unet.load_state_dict(unet_entry["state"])
            out[f"{modality}_features"] = diffusion_feature_bundle(unet, unet_entry["spec"], data[modality],
                                                                   spec["timesteps"], int(spec["feature_seed"]))
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, data: dict[str, Any], config: dict[str, Any],
                modalities: tuple[str, ...] | None = None, **forward: Any) -> np.ndarray:
        cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k != "weight_term"})
        device = resolve_device(cfg.device)
        model.to(device).eval()
        tensors = {m: self._branch_inputs(data, m) for m in self.modalities}
        n = len(data[self.modalities[0]])
        out = np.empty(n, dtype=np.int64)
        for start in range(0, n, cfg.eval_batch_size):
            sl = slice(start, start + cfg.eval_batch_size)
            inputs: dict[str, torch.Tensor | None] = {}
            for m, (patches, features) in tensors.items():
                inputs[m], inputs[f"{m}_features"] = patches[sl].to(device), None if features is None else features[sl].to(device)
            out[sl] = model(**inputs)[0].argmax(1).cpu().numpy()
        return out

    def score(self, model, test, config, modalities, **forward):  # noqa: ANN001 — same as the base
        pred = self.predict(model, test, config)
        return classification_report(np.asarray(test["labels"]), pred, int(test["num_classes"]),
                                     list(test.get("class_names") or []) or None)

    def evaluation_variants(self, model, test, config, modalities):  # noqa: ANN001 — same as the base
        return {}  # the single-modality FedDiff runs are their own ablations


register("ddpm_hsi", DiffusionAlgorithm("ddpm_hsi", ("hsi",)))
register("ddpm_lidar", DiffusionAlgorithm("ddpm_lidar", ("lidar",)))
register("feddiff", FedDiffAlgorithm("feddiff"))
register("feddiff_hsi", FedDiffAlgorithm("feddiff_hsi", ("hsi",)))
register("feddiff_lidar", FedDiffAlgorithm("feddiff_lidar", ("lidar",)))
register("feddiff_centralized", FedDiffAlgorithm("feddiff_centralized"))
