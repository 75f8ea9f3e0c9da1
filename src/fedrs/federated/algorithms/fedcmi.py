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
from fedrs.federated.algorithm_base import VARIANT_KEYS, ClassifierAlgorithm, Modalities
from fedrs.federated.local import Batch, Objective, TrainConfig, batch_inputs, split_config, train_objective
from fedrs.models.cmi import CmiSpec, CrossModalInfiltrationNet, cmi_parameter_modality


@dataclass(frozen=True)
class CmiConfig:
    lambda1: float = 2.0        # weight of the per-modality classifier losses
    lambda2: float = 1.0        # weight of the infiltration loss
    gamma: float = 2.0          # sharpness of the class-wise temperature
    warmup_rounds: int = 1      # rounds without infiltration

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CmiConfig:
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


def true_class_probabilities(model: CrossModalInfiltrationNet, data: dict[str, Any], cfg: TrainConfig
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P_H[c], P_L[c]: mean softmax(c(s))[c] over the client's class-c pixels; and which classes it has."""
    policy = cfg.policy()
    model.to(policy.device).eval()
    k = model.spec.num_classes
    labels = np.asarray(data["labels"])
    sums = {m: np.zeros(k) for m in ("hsi", "lidar")}
    with torch.inference_mode():
        for start in range(0, labels.size, cfg.eval_batch_size):
            sl = slice(start, start + cfg.eval_batch_size)
            y = torch.as_tensor(labels[sl], device=policy.device)
            with policy.autocast():
                z = model.project(**batch_inputs(data, sl, ("hsi", "lidar"), policy.device))
                logits = {"hsi": model.hsi_classifier(z["s_hsi"]), "lidar": model.lidar_classifier(z["s_lidar"])}
            for m, scores in logits.items():
                p = F.softmax(scores.float(), dim=1)[torch.arange(y.numel(), device=policy.device), y]
                np.add.at(sums[m], labels[sl], p.cpu().numpy())
    counts = np.bincount(labels, minlength=k)
    present = counts > 0
    safe = np.maximum(counts, 1)
    return sums["hsi"] / safe, sums["lidar"] / safe, present


def cmi_objective(model: CrossModalInfiltrationNet, data: dict[str, Any], modalities: tuple[str, ...],
                  cfg: TrainConfig, cmi: CmiConfig, rnd: int, trainable: set[str] | None = None,
                  sent: set[str] | None = None) -> Objective:
    """FedCMI's local objective; the model's weights on entry are the teacher's."""
    multimodal = set(modalities) == {"hsi", "lidar"}
    infiltrate = multimodal and rnd > cmi.warmup_rounds and cmi.lambda2 > 0
    device = cfg.policy().device
    teacher = None
    tau = torch.ones(model.spec.num_classes)
    if infiltrate:
        teacher = copy.deepcopy(model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        p_hsi, p_lidar, present = true_class_probabilities(teacher, data, cfg)
        tau = torch.as_tensor(class_temperatures(p_hsi, p_lidar, present, cmi.gamma), dtype=torch.float32)
    tau = tau.to(device)
    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)

    def loss_of(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {m: batch.take(data[m]) for m in modalities}
        y = batch.take(labels, torch.long)
        z = model.project(**inputs)
        loss = F.cross_entropy(model.fused_logits(z).float(), y)
        if not multimodal:
            return loss, {}
        logits_h, logits_l = model.hsi_classifier(z["s_hsi"]), model.lidar_classifier(z["s_lidar"])
        loss = loss + cmi.lambda1 * (F.cross_entropy(logits_h.float(), y) + F.cross_entropy(logits_l.float(), y))
        if teacher is None:
            return loss, {}
        dominant = dominant_modality(logits_h.detach(), logits_l.detach(), y)
        with torch.no_grad():
            zt = teacher.project(**inputs)
            teacher_logits = (teacher.hsi_classifier(zt["s_hsi"]) if dominant == "hsi"
                              else teacher.lidar_classifier(zt["s_lidar"]))
        student_logits = (model.lidar_classifier(z["i_lidar"]) if dominant == "hsi"
                          else model.hsi_classifier(z["i_hsi"]))
        inf = infiltration_loss(student_logits, teacher_logits, tau[y])
        return loss + cmi.lambda2 * inf, {"infiltration_loss": float(inf.detach()),
                                          "hsi_dominant_fraction": float(dominant == "hsi")}

    return Objective(int(labels.numel()), loss_of, cfg, trainable, sent,
                     metric_defaults={"infiltration_loss": 0.0, "hsi_dominant_fraction": 0.0},
                     metrics={"mean_temperature": float(tau.mean())})


def cmi_local_update(model: CrossModalInfiltrationNet, data: dict[str, Any], modalities: tuple[str, ...],
                     cfg: TrainConfig, cmi: CmiConfig, seed: int, rnd: int, trainable: set[str],
                     carry: dict[str, Any] | None = None) -> dict[str, float]:
    """``cmi_objective`` trained in place: the metrics."""
    return train_objective(model, cmi_objective(model, data, modalities, cfg, cmi, rnd, trainable), seed, carry)[1]


@dataclass(frozen=True)
class FedCMIAlgorithm(ClassifierAlgorithm):
    def owner(self, parameter: str) -> str | None:
        return cmi_parameter_modality(parameter)

    def calibration_layer(self) -> str:
        return "fusion"  # Linear over [s_hsi, s_lidar]: the logits FedCMI predicts with

    def build_model(self, spec: dict[str, Any]) -> CrossModalInfiltrationNet:
        return CrossModalInfiltrationNet(CmiSpec.from_dict(spec))

    def client_objective(self, model: nn.Module, data: dict[str, Any], client_modalities: Modalities,
                         config: dict[str, Any], rnd: int = 1,
                         partner: dict[str, torch.Tensor] | None = None) -> Objective:
        assert isinstance(model, CrossModalInfiltrationNet)
        cfg, own = split_config(config, "cmi")
        return cmi_objective(model, data, self.usable_modalities(client_modalities), cfg,
                             CmiConfig.from_dict(own.get("cmi")), rnd, self.trainable(model, client_modalities),
                             self.client_keys(model, client_modalities))

    def evaluation_variants(
        self, model: nn.Module, test: dict[str, Any], config: dict[str, Any], modalities: Modalities
    ) -> dict[str, dict[str, float]]:
        """Single-modality inference through the infiltration projector, and zero-filled."""
        out = {}
        for keep in ("hsi", "lidar"):
            for name, zero_fill in ((f"{keep}_infiltrated", False), (f"{keep}_zero_filled", True)):
                report = self.score(model, test, config, (keep,), zero_fill=zero_fill)
                out[name] = {k: report[k] for k in VARIANT_KEYS}
        return out
