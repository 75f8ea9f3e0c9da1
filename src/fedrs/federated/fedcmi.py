"""FedCMI: balanced multi-modal FL by cross-modal infiltration (../shared/spec/fedcmi.md).

Plain functions for each part of the local objective (tests call them directly) and the algorithm
object the Flower runtime runs by the name ``fedcmi``.

Local objective of a multimodal client, per batch:
  base  = CE(fusion(s_H, s_L), y) + λ1·[CE(c_H(s_H), y) + CE(c_L(s_L), y)]
  dominant modality: HSI when Σ softmax(c_H(s_H))[y] / Σ softmax(c_L(s_L))[y] > 1
  teacher = the frozen received global model: its c(s) of the dominant modality;
  student = the local classifier of the weak modality applied to the weak modality's infiltration
  projection; L_inf = cross-entropy of softened distributions with class-wise temperature τ_y;
  loss = base + λ2·L_inf (after ``warmup_rounds``) (+ μ/2·‖w − w_global‖²).
Unimodal clients: CE on their fused output (+ the proximal term).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrs.config import from_mapping
from fedrs.federated.aggregation import State
from fedrs.federated.algorithms import VARIANT_KEYS, ModalityAwareAlgorithm, register
from fedrs.federated.local import LocalTrainer, TrainConfig, autocast, batch_inputs, iter_batches, resolve_device
from fedrs.models.cmi import CmiSpec, CrossModalInfiltrationNet, cmi_parameter_modality


@dataclass(frozen=True)
class CmiConfig:
    lambda1: float = 2.0        # weight of the per-modality classifier losses
    lambda2: float = 1.0        # weight of the infiltration loss
    gamma: float = 2.0          # sharpness of the class-wise temperature
    warmup_rounds: int = 1      # rounds without infiltration

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CmiConfig":
        return from_mapping(cls, d, label="fedcmi config")


def dominant_modality(hsi_logits: torch.Tensor, lidar_logits: torch.Tensor, labels: torch.Tensor) -> str:
    """``"hsi"`` when the HSI classifier puts more total probability on the true classes."""
    idx = torch.arange(labels.numel(), device=labels.device)
    s_hsi = F.softmax(hsi_logits.float(), dim=1)[idx, labels].sum()
    s_lidar = F.softmax(lidar_logits.float(), dim=1)[idx, labels].sum()
    return "hsi" if float(s_lidar) == 0.0 or float(s_hsi / s_lidar) > 1.0 else "lidar"


def class_temperatures(p_hsi: np.ndarray, p_lidar: np.ndarray, present: np.ndarray, gamma: float) -> np.ndarray:
    """τ per class from the mean true-class probabilities of the two classifiers on a client's pixels.

    r̄ = mean over present classes with P_L > 0 of P_H/P_L. If r̄ > 1 (HSI dominates on average),
    classes whose ratio exceeds r̄ get τ = 1/(1 + γ·ln(ratio/r̄)) < 1; otherwise the same with the
    roles swapped (P_L/P_H against 1/r̄). Every other class keeps τ = 1.
    """
    p_hsi, p_lidar = np.asarray(p_hsi, float), np.asarray(p_lidar, float)
    tau = np.ones_like(p_hsi)
    valid = np.asarray(present, bool) & (p_lidar > 0)
    if not valid.any():
        return tau
    ratio = np.where(valid, p_hsi / np.where(p_lidar > 0, p_lidar, 1.0), 0.0)
    r_bar = float(ratio[valid].mean())
    if r_bar > 1.0:
        sel = valid & (ratio > r_bar)
        tau[sel] = 1.0 / (1.0 + gamma * np.log(ratio[sel] / r_bar))
    elif r_bar > 0.0:
        inv_valid = np.asarray(present, bool) & (p_hsi > 0)
        inverse = np.where(inv_valid, p_lidar / np.where(p_hsi > 0, p_hsi, 1.0), 0.0)
        sel = inv_valid & (inverse > 1.0 / r_bar)
        tau[sel] = 1.0 / (1.0 + gamma * np.log(inverse[sel] * r_bar))
    return tau


def infiltration_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """−(1/B)·Σ_i Σ_k p_T(k|i)·log p_S(k|i) with both softened by the sample's class temperature;
    no gradient reaches the teacher."""
    t = tau.reshape(-1, 1).to(student_logits.dtype)
    p_teacher = F.softmax(teacher_logits.detach().float() / t, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    return -(p_teacher * log_p_student).sum(dim=1).mean()


@torch.no_grad()
def true_class_probabilities(model: CrossModalInfiltrationNet, data: dict[str, Any], cfg: TrainConfig
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P_H[c], P_L[c]: mean softmax(c(s))[c] over the client's class-c pixels; and which classes it has."""
    device = resolve_device(cfg.device)
    model.to(device).eval()
    k = model.spec.num_classes
    labels = np.asarray(data["labels"])
    sums = {m: np.zeros(k) for m in ("hsi", "lidar")}
    for start in range(0, labels.size, cfg.eval_batch_size):
        sl = slice(start, start + cfg.eval_batch_size)
        z = model.project(**batch_inputs(data, sl, ("hsi", "lidar"), device))
        y = torch.as_tensor(labels[sl], device=device)
        for m, head in (("hsi", model.hsi_classifier), ("lidar", model.lidar_classifier)):
            p = F.softmax(head(z[f"s_{m}"]).float(), dim=1)[torch.arange(y.numel(), device=device), y]
            np.add.at(sums[m], labels[sl], p.cpu().numpy())
    counts = np.bincount(labels, minlength=k)
    present = counts > 0
    safe = np.maximum(counts, 1)
    return sums["hsi"] / safe, sums["lidar"] / safe, present


def cmi_local_update(model: CrossModalInfiltrationNet, data: dict[str, Any], modalities: tuple[str, ...],
                     cfg: TrainConfig, cmi: CmiConfig, seed: int, rnd: int, trainable: set[str]) -> dict[str, float]:
    """Train ``model`` in place with FedCMI's objective; the model's weights on entry are the teacher's."""
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    multimodal = set(modalities) == {"hsi", "lidar"}
    infiltrate = multimodal and rnd > cmi.warmup_rounds and cmi.lambda2 > 0
    teacher = None
    tau = torch.ones(model.spec.num_classes)
    if infiltrate:
        teacher = copy.deepcopy(model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        p_hsi, p_lidar, present = true_class_probabilities(teacher, data, cfg)
        tau = torch.as_tensor(class_temperatures(p_hsi, p_lidar, present, cmi.gamma), dtype=torch.float32)
    tau = tau.to(device)

    model.to(device).train()
    trainer = LocalTrainer(model, cfg, trainable)
    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)
    n = int(labels.numel())
    totals = {"loss": 0.0, "infiltration": 0.0, "hsi_dominant": 0, "batches": 0, "seen": 0}
    for _ in range(cfg.epochs):
        for idx in iter_batches(n, cfg.batch_size, generator):
            if idx.size < 2:
                continue
            inputs = batch_inputs(data, idx, modalities, device)
            y = labels[idx].to(device)
            with autocast(device, cfg.autocast):
                z = model.project(**inputs)
                fused = model.fused_logits(z)
                logits_h = model.hsi_classifier(z["s_hsi"]) if multimodal else None
                logits_l = model.lidar_classifier(z["s_lidar"]) if multimodal else None
            loss = F.cross_entropy(fused.float(), y)
            if multimodal:
                loss = loss + cmi.lambda1 * (F.cross_entropy(logits_h.float(), y) + F.cross_entropy(logits_l.float(), y))
            if teacher is not None:
                dominant = dominant_modality(logits_h.detach(), logits_l.detach(), y)
                with torch.no_grad(), autocast(device, cfg.autocast):
                    zt = teacher.project(**inputs)
                if dominant == "hsi":
                    teacher_logits = teacher.hsi_classifier(zt["s_hsi"])
                    student_logits = model.lidar_classifier(z["i_lidar"])
                else:
                    teacher_logits = teacher.lidar_classifier(zt["s_lidar"])
                    student_logits = model.hsi_classifier(z["i_hsi"])
                inf = infiltration_loss(student_logits, teacher_logits, tau[y])
                loss = loss + cmi.lambda2 * inf
                totals["infiltration"] += float(inf.detach())
                totals["hsi_dominant"] += int(dominant == "hsi")
            totals["loss"] += trainer.step(loss) * idx.size
            totals["seen"] += idx.size
            totals["batches"] += 1
    trainer.close()
    batches = max(totals["batches"], 1)
    return {"train_loss": totals["loss"] / max(totals["seen"], 1), "num_samples": n,
            "infiltration_loss": totals["infiltration"] / batches if infiltrate else 0.0,
            "hsi_dominant_fraction": totals["hsi_dominant"] / batches if infiltrate else 0.0,
            "mean_temperature": float(tau.mean())}


@dataclass(frozen=True)
class FedCMIAlgorithm(ModalityAwareAlgorithm):
    def owner(self, parameter: str) -> str | None:
        return cmi_parameter_modality(parameter)

    def build_model(self, spec: dict[str, Any]) -> CrossModalInfiltrationNet:
        return CrossModalInfiltrationNet(CmiSpec.from_dict(spec))

    def client_update(self, model: nn.Module, data: dict[str, Any], client_modalities: tuple[str, ...],
                      config: dict[str, Any], seed: int, rnd: int = 1) -> tuple[State, dict[str, float]]:
        config = dict(config)
        cmi = CmiConfig.from_dict(config.pop("cmi", None))
        keys = self.client_keys(model, client_modalities)
        trainable = {n for n, _ in model.named_parameters() if n in keys}
        metrics = cmi_local_update(model, data, self.usable_modalities(client_modalities), TrainConfig.from_dict(config),
                                   cmi, seed, rnd, trainable)
        return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in keys}, metrics

    def predict(self, model, data, config, modalities=None, **forward):  # noqa: ANN001 — same as the base
        return super().predict(model, data, {k: v for k, v in config.items() if k != "cmi"}, modalities, **forward)

    def evaluation_variants(self, model: nn.Module, test: dict[str, Any], config: dict[str, Any],
                            modalities: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Single-modality inference through the infiltration projector, and zero-filled."""
        out = {}
        for keep in ("hsi", "lidar"):
            for name, zero_fill in ((f"{keep}_infiltrated", False), (f"{keep}_zero_filled", True)):
                report = self.score(model, test, config, (keep,), zero_fill=zero_fill)
                out[name] = {k: report[k] for k in VARIANT_KEYS}
        return out


register("fedcmi", FedCMIAlgorithm("fedcmi"))
