"""A client's local update: plain PyTorch over a partition's arrays and a config dict.

The same function serves FedAvg and FedProx (``proximal_mu`` > 0 adds μ/2·‖w − w_global‖² over the
parameters the client trains), centralized training (one "client" holding everything) and local
training. Determinism: the caller passes a seed; shuffling, dropout and initialisation follow it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrs.config import from_mapping

MODALITIES = ("hsi", "lidar")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"       # adam | sgd
    momentum: float = 0.9
    proximal_mu: float = 0.0
    device: str = "auto"          # auto | cpu | cuda
    autocast: str = "auto"        # auto (bf16 where the hardware has it) | bf16 | off
    eval_batch_size: int = 1024

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainConfig":
        return from_mapping(cls, d, label="training config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_seed(*parts: int) -> int:
    """One 31-bit seed from the run seed and e.g. (round, client id): stable across processes."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def lr_at_round(base_lr: float, rnd: int, num_rounds: int, schedule: str = "cosine", floor: float = 0.05) -> float:
    """Learning rate of round ``rnd`` (1-based): ``constant``, or ``cosine`` from ``base_lr`` down to
    ``floor``·``base_lr`` at the last round. Every algorithm follows the same schedule per round."""
    if schedule == "constant" or num_rounds <= 1:
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"lr_schedule {schedule!r}; expected 'cosine' or 'constant'")
    progress = (rnd - 1) / (num_rounds - 1)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without them bf16 autocast on CPU is emulated and much slower than fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None) or getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def autocast(device: torch.device, mode: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on a CPU with native bf16 (AVX-512 BF16/AMX) or on CUDA; a no-op otherwise."""
    if mode == "off" or (mode == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def batch_inputs(data: dict[str, Any], index: np.ndarray | slice, modalities: tuple[str, ...],
                 device: torch.device) -> dict[str, torch.Tensor]:
    return {m: torch.as_tensor(data[m][index], dtype=torch.float32, device=device)
            for m in modalities if m in data}


def iter_batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[np.ndarray]:
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"training config: optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor], names: set[str]) -> torch.Tensor:
    terms = [(p - reference[n]).pow(2).sum() for n, p in model.named_parameters() if n in names and n in reference]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class LocalTrainer:
    """The optimiser, trainable subset and FedProx reference of one local update.

    Only parameters in ``trainable`` (default: all) receive gradients — a unimodal client leaves the
    other modality's parameters untouched. ``step`` adds μ/2·‖w − w_start‖² when μ > 0.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, trainable: set[str] | None = None):
        self.model, self.cfg = model, cfg
        self.names = {n for n, _ in model.named_parameters()} if trainable is None else set(trainable)
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.names)
        self.optimizer = build_optimizer([p for n, p in model.named_parameters() if n in self.names], cfg)
        self.reference = ({n: p.detach().clone() for n, p in model.named_parameters() if n in self.names}
                          if cfg.proximal_mu > 0 else {})

    def step(self, loss: torch.Tensor) -> float:
        if self.reference:
            loss = loss + 0.5 * self.cfg.proximal_mu * proximal_term(self.model, self.reference, self.names)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def close(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)


def supervised_update(model: nn.Module, data: dict[str, Any], modalities: tuple[str, ...], cfg: TrainConfig,
                      seed: int, trainable: set[str] | None = None) -> dict[str, float]:
    """Train ``model`` in place on ``data`` (patch arrays per modality + ``labels``) with cross-entropy;
    returns the mean training loss and the sample count."""
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    trainer = LocalTrainer(model, cfg, trainable)
    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)
    n = int(labels.numel())
    losses, seen = 0.0, 0
    for _ in range(cfg.epochs):
        for idx in iter_batches(n, cfg.batch_size, generator):
            if idx.size < 2:  # BatchNorm cannot normalise a batch of one
                continue
            with autocast(device, cfg.autocast):
                logits = model(**batch_inputs(data, idx, modalities, device))
            losses += trainer.step(F.cross_entropy(logits.float(), labels[idx].to(device))) * idx.size
            seen += idx.size
    trainer.close()
    return {"train_loss": losses / max(seen, 1), "num_samples": n}


@torch.no_grad()
def predict(model: nn.Module, data: dict[str, Any], modalities: tuple[str, ...], cfg: TrainConfig,
            forward: dict[str, Any] | None = None) -> np.ndarray:
    """Class predictions for every sample of ``data`` using only ``modalities`` (others absent);
    ``forward`` holds extra keyword arguments of the model's forward (e.g. ``zero_fill``)."""
    device = resolve_device(cfg.device)
    model.to(device).eval()
    n = len(data["labels"]) if "labels" in data else len(next(data[m] for m in modalities if m in data))
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, cfg.eval_batch_size):
        sl = slice(start, start + cfg.eval_batch_size)
        with autocast(device, cfg.autocast):
            logits = model(**batch_inputs(data, sl, modalities, device), **(forward or {}))
        out[sl] = logits.float().argmax(1).cpu().numpy()
    return out
