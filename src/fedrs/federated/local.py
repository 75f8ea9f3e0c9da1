"""A client's local update: one training loop for every algorithm, plain PyTorch over arrays.

``local_training`` owns what every local update shares — the seed and the shuffling generator, the
device and precision policy, the trainable subset, the optimiser, the FedProx term, epochs ×
batches and the loss accumulation. An algorithm plugs in a *batch loss*: a function of one
``Batch`` (its sample indices, device and generator) that returns the loss (and optionally
per-batch metrics to average). FedAvg/FedProx's cross-entropy, FedCMI's infiltration objective,
the DDPM noise loss and FedDiff's three-head loss are all such functions.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrs.compute import ComputePolicy, compute_policy
from fedrs.config import from_mapping
from fedrs.federated.noise import noise_generator
from fedrs.federated.record_privacy import (
    RecordPrivacy,
    clipped_gradient_sum,
    noised_mean_gradient,
    poisson_batches,
    refuse_batch_norm,
    sampling_rate,
)
from fedrs.metrics import CONFIDENCE_BINS, confidence_bin_sums, expected_calibration_error

MODALITIES = ("hsi", "lidar")
AUGMENTS = ("none", "dihedral")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"       # adam | sgd
    momentum: float = 0.9
    proximal_mu: float = 0.0
    device: str = "auto"          # auto | cpu | cuda[:N]
    precision: str = "fp32"       # fp32 | bf16 | bf16-force (fedrs.compute)
    eval_batch_size: int = 1024
    keep_optimizer_state: bool = False  # carry the optimiser's moments from round to round (else fresh)
    decoupled_decay: dict[str, float] | None = None  # {name prefix or "conv": λ}: w ← w − lr·2λ·w per step
    record_privacy: dict[str, Any] | None = None  # DP-SGD per record (fedrs.federated.record_privacy); None: off
    augment: str = "none"         # dihedral: each training sample turned by a random symmetry of the square

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"training config: augment {self.augment!r}; expected one of {list(AUGMENTS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        return from_mapping(cls, d, label="training config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def policy(self) -> ComputePolicy:
        return compute_policy(self.device, self.precision)


def split_config(config: dict[str, Any] | None, *extra: str) -> tuple[TrainConfig, dict[str, Any]]:
    """A training config and the algorithm's own keys (``extra``) taken out of it."""
    config = dict(config or {})
    own = {k: config.pop(k) for k in extra if k in config}
    return TrainConfig.from_dict(config), own


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

    def __init__(self, model: nn.Module, cfg: TrainConfig, trainable: set[str] | None = None,
                 carry: dict[str, Any] | None = None):
        self.model, self.cfg, self.carry = model, cfg, carry
        self.names = {n for n, _ in model.named_parameters()} if trainable is None else set(trainable)
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.names)
        params = [p for n, p in model.named_parameters() if n in self.names]
        self.optimizer = build_optimizer(params, cfg)
        if cfg.keep_optimizer_state and carry is not None and "optimizer" in carry:
            self.optimizer.load_state_dict(carry["optimizer"])
            for group in self.optimizer.param_groups:  # this round's learning rate, not the stored one
                group["lr"] = cfg.lr
        self.reference = ({n: p.detach().clone() for n, p in model.named_parameters() if n in self.names}
                          if cfg.proximal_mu > 0 else {})
        self.decay = [(p, float(lam)) for n, p in model.named_parameters() if n in self.names
                      for key, lam in (cfg.decoupled_decay or {}).items()
                      if (key == "conv" and p.ndim == 4) or (key != "conv" and n.startswith(key))]

    @property
    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if n in self.names]

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_params]

    def step(self, loss: torch.Tensor) -> float:
        if self.reference:
            loss = loss + 0.5 * self.cfg.proximal_mu * proximal_term(self.model, self.reference, self.names)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._advance()
        return float(loss.detach())

    def step_with(self, gradients: list[torch.Tensor]) -> None:
        """A step along given gradients of ``params`` (DP-SGD's noised estimate); the FedProx term's
        gradient μ·(w − w_start) is added here — it depends on no record."""
        self.optimizer.zero_grad(set_to_none=True)
        for (name, p), g in zip(self.named_params, gradients, strict=True):
            p.grad = g.to(p.dtype)
            if name in self.reference:
                p.grad.add_(p.detach() - self.reference[name], alpha=self.cfg.proximal_mu)
        self._advance()

    def _advance(self) -> None:
        self.optimizer.step()
        if self.decay:  # the gradient of λ‖w‖², applied outside the optimiser's normalisation
            lr = self.optimizer.param_groups[0]["lr"]
            with torch.no_grad():
                for p, lam in self.decay:
                    p.mul_(1.0 - 2.0 * lr * lam)

    def close(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)
        if self.cfg.keep_optimizer_state and self.carry is not None:
            self.carry["optimizer"] = self.optimizer.state_dict()


@functools.lru_cache(maxsize=8)
def _dihedral_permutations(size: int) -> torch.Tensor:
    """(8, size²): where each cell of a size×size patch comes from under each of the square's eight
    symmetries (0-3 quarter turns, 4-7 the same followed by a left-right mirror)."""
    cells = torch.arange(size * size).reshape(size, size)
    turns = [torch.rot90(cells, k) for k in range(4)]
    return torch.stack(turns + [t.flip(-1) for t in turns]).reshape(8, -1)


def dihedral(x: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    """Sample i of ``x`` (N, C, S, S) turned by element ``elements[i]`` of the square's symmetry group:
    0-3 quarter turns, 4-7 the same followed by a left-right mirror. A patch's centre pixel (or
    centre 2×2 block) stays where it is, so its label still holds. One gather of exact copies
    (the loop over the elements present it replaced gave the same bits at 2.5-3.5× the time per batch,
    measured on 2 cores when it was replaced; bench/bench_augment.py times this one)."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square (N, C, S, S) samples; got shape {tuple(x.shape)}")
    if len(elements) != len(x):
        raise ValueError(f"dihedral augmentation: {len(elements)} elements for {len(x)} samples")
    integers = not (elements.is_floating_point() or elements.is_complex())
    if not integers or (len(elements) and not 0 <= int(elements.min()) <= int(elements.max()) < 8):
        raise ValueError(f"dihedral augmentation: elements must be integers 0-7; got {elements.tolist()[:8]}")
    n, c, size = x.shape[0], x.shape[1], x.shape[-1]
    source = _dihedral_permutations(size)[elements.cpu().long()].to(x.device)  # indexing copies the cached table
    return torch.gather(x.flatten(2), 2, source[:, None, :].expand(n, c, size * size)).view_as(x)


@dataclass(frozen=True)
class Batch:
    """What a batch-loss function gets: which samples, where to put them, and the run's generator
    (for anything random in the loss, e.g. the DDPM's timesteps and noise). With ``turns`` (one
    dihedral element per sample) every image-shaped array taken is turned alike — the patches of both
    modalities, their diffusion features and a partner's branch maps stay aligned pixel for pixel."""

    index: np.ndarray
    device: torch.device
    generator: torch.Generator
    turns: torch.Tensor | None = None

    def take(self, array: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``array[index]`` as a tensor on the device (NumPy arrays and CPU tensors alike), turned by
        ``turns`` when it is image-shaped (N, C, S, S)."""
        index = self.index
        tensor = array[index] if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array)[index])
        if self.turns is not None and tensor.ndim == 4:
            tensor = dihedral(tensor, self.turns)
        return tensor.to(self.device, dtype)


def training_batch(index: np.ndarray, device: torch.device, generator: torch.Generator, augment: str) -> Batch:
    """The batch a training step sees: with ``augment`` its dihedral elements drawn from the run's
    generator (seeded: the same run turns the same samples alike; "none" draws nothing, so runs
    without augmentation shuffle as they always did)."""
    turns = torch.randint(0, 8, (len(index),), generator=generator) if augment == "dihedral" else None
    return Batch(index, device, generator, turns)


BatchLoss = Callable[[Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


def batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics, by module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def norm_statistic_names(model: nn.Module) -> set[str]:
    """State-dict names of the BatchNorm running statistics: all that a statistics pass sends."""
    return {f"{name}.{buffer}" if name else buffer for name in batch_norms(model)
            for buffer in ("running_mean", "running_var", "num_batches_tracked")}


def statistics_pass(model: nn.Module, num_samples: int, batch_loss: BatchLoss, cfg: TrainConfig, seed: int,
                    min_batch: int = 2) -> dict[str, float]:
    """Recompute every BatchNorm's running statistics as the plain average over one pass of
    batches through ``batch_loss`` (the forward the model trains with, weights untouched).

    Why: after averaging, the global weights are not the weights any client's running statistics
    were gathered with — on class-disjoint sites the averaged statistics no longer describe what
    the averaged model computes. Returns the pass's mean loss and the sample count."""
    policy = cfg.policy()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(policy.device).train()
    norms = list(batch_norms(model).values())
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts alike
    total, seen = 0.0, 0
    try:
        with torch.no_grad():
            for idx in iter_batches(num_samples, cfg.batch_size, generator):
                if idx.size < min_batch:
                    continue
                with policy.autocast():
                    out = batch_loss(Batch(idx, policy.device, generator))
                loss = out[0] if isinstance(out, tuple) else out
                total += float(loss.float()) * idx.size
                seen += idx.size
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return {"statistics_loss": total / max(seen, 1), "num_samples": num_samples}


def local_training(model: nn.Module, num_samples: int, batch_loss: BatchLoss, cfg: TrainConfig, seed: int,
                   trainable: set[str] | None = None, min_batch: int = 2,
                   carry: dict[str, Any] | None = None) -> dict[str, float]:
    """Train ``model`` in place: ``cfg.epochs`` passes over ``num_samples`` in seeded random batches,
    each batch's loss (computed under the precision policy) stepped by the optimiser over
    ``trainable``. Returns the sample-weighted mean loss (FedProx term included), the sample count
    and the batch mean of any metrics the batch loss reports. Batches smaller than ``min_batch``
    are skipped (BatchNorm cannot normalise a batch of one)."""
    if cfg.record_privacy:
        return private_local_training(model, num_samples, batch_loss, cfg, seed, trainable, carry)
    policy = cfg.policy()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(policy.device).train()
    trainer = LocalTrainer(model, cfg, trainable, carry)
    total, seen, batches = 0.0, 0, 0
    extras: dict[str, float] = {}
    try:
        for _ in range(cfg.epochs):
            for idx in iter_batches(num_samples, cfg.batch_size, generator):
                if idx.size < min_batch:
                    continue
                batch = training_batch(idx, policy.device, generator, cfg.augment)
                with policy.autocast():
                    out = batch_loss(batch)
                loss, metrics = out if isinstance(out, tuple) else (out, {})
                total += trainer.step(loss.float()) * idx.size
                seen += idx.size
                batches += 1
                for key, value in metrics.items():
                    extras[key] = extras.get(key, 0.0) + float(value)
    finally:
        trainer.close()
    return {"train_loss": total / max(seen, 1), "num_samples": num_samples,
            **{k: v / max(batches, 1) for k, v in extras.items()}}


def private_local_training(model: nn.Module, num_samples: int, batch_loss: BatchLoss, cfg: TrainConfig, seed: int,
                           trainable: set[str] | None = None, carry: dict[str, Any] | None = None) -> dict[str, float]:
    """``local_training`` as DP-SGD (``fedrs.federated.record_privacy``): Poisson batches and noise
    from a generator only this client knows, each record's gradient clipped, the noised mean
    stepped. The loss it returns is data-dependent and stays on the client (``public_metrics``)."""
    privacy = RecordPrivacy.from_dict(cfg.record_privacy or {})
    refuse_batch_norm(model)
    policy = cfg.policy()
    torch.manual_seed(seed)
    # batches and noise from the OS's CSPRNG (the other parties know the seed); the loss's own draws
    # (e.g. a DDPM's timesteps) from a generator seeded with secret bits
    secret = noise_generator(derive_seed(seed, 4_242) if privacy.deterministic_noise else None)
    draws = secret if isinstance(secret, torch.Generator) else torch.Generator().manual_seed(secrets.randbits(63))
    model.to(policy.device).train()
    trainer = LocalTrainer(model, cfg, trainable, carry)
    expected = sampling_rate(num_samples, cfg.batch_size) * num_samples

    def record_loss(index: np.ndarray) -> torch.Tensor:
        batch = training_batch(index, policy.device, draws, cfg.augment)
        with policy.autocast():
            out = batch_loss(batch)
        return (out[0] if isinstance(out, tuple) else out).float()

    total, steps, all_norms = 0.0, 0, list[float]()
    try:
        for idx in poisson_batches(num_samples, cfg.batch_size, cfg.epochs, secret):
            sums, norms, losses = clipped_gradient_sum(trainer.params, idx, record_loss, privacy.clipping_norm)
            trainer.step_with(noised_mean_gradient(sums, privacy, expected, secret))
            all_norms += norms
            total += sum(losses)
            steps += 1
    finally:
        trainer.close()
    seen = np.asarray(all_norms)  # the norms tell how to choose C (reported only without noise)
    return {"train_loss": total / max(seen.size, 1), "num_samples": num_samples, "dp_steps": steps,
            "dp_clipped_fraction": float((seen > privacy.clipping_norm).mean()) if seen.size else 0.0,
            "dp_record_norm_median": float(np.median(seen)) if seen.size else 0.0}


@dataclass
class Objective:
    """What a client computes in a round — every algorithm's answer to the same question: a batch
    loss over its samples under a training config, the parameters it trains, the tensors it sends
    back (None: all) and what it reports besides the loss. The runtime trains it
    (``train_objective``) or, in the statistics pass, runs it without training (``objective_statistics``)."""

    num_samples: int
    batch_loss: BatchLoss
    cfg: TrainConfig
    trainable: set[str] | None = None
    sent: set[str] | None = None
    min_batch: int = 2
    metric_defaults: dict[str, float] = field(default_factory=dict)  # reported as 0 when no batch set them
    metrics: dict[str, float] = field(default_factory=dict)  # reported as they are


def sent_state(model: nn.Module, keys: set[str] | None) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if keys is None or k in keys}


def train_objective(model: nn.Module, objective: Objective, seed: int, carry: dict[str, Any] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A local update: ``objective`` trained in place; the tensors to send and the metrics."""
    metrics = local_training(model, objective.num_samples, objective.batch_loss, objective.cfg, seed,
                             objective.trainable, objective.min_batch, carry)
    for key, value in objective.metric_defaults.items():
        metrics.setdefault(key, value)
    return sent_state(model, objective.sent), {**metrics, **objective.metrics}


def objective_statistics(model: nn.Module, objective: Objective, seed: int
                         ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The statistics pass of a client: ``objective`` run without training; only the BatchNorm
    running statistics of the tensors it sends."""
    metrics = statistics_pass(model, objective.num_samples, objective.batch_loss, objective.cfg, seed,
                              objective.min_batch)
    statistics = norm_statistic_names(model)
    return {k: v for k, v in sent_state(model, objective.sent).items() if k in statistics}, metrics


def supervised_objective(model: nn.Module, data: dict[str, Any], modalities: tuple[str, ...], cfg: TrainConfig,
                         trainable: set[str] | None = None, sent: set[str] | None = None) -> Objective:
    """Cross-entropy on ``data`` (patch arrays per modality + ``labels``): FedAvg, FedProx,
    centralized and local training."""
    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.long)

    def loss(batch: Batch) -> torch.Tensor:
        logits = model(**{m: batch.take(data[m]) for m in modalities if m in data})
        return F.cross_entropy(logits.float(), batch.take(labels, torch.long))

    return Objective(int(labels.numel()), loss, cfg, trainable, sent)


def supervised_update(model: nn.Module, data: dict[str, Any], modalities: tuple[str, ...], cfg: TrainConfig,
                      seed: int, trainable: set[str] | None = None,
                      carry: dict[str, Any] | None = None) -> dict[str, float]:
    """``supervised_objective`` trained: the metrics."""
    return train_objective(model, supervised_objective(model, data, modalities, cfg, trainable), seed, carry)[1]


def inference_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``n`` samples, ``batch_size`` at a time."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@dataclass
class CrossEntropyTally:
    """The summed cross-entropy of a model's logits against ``labels`` (0-based), gathered batch by
    batch while predicting — the loss of the scored model itself, at no second forward pass (a round's
    logged training loss is the clients' mean over their local steps, not the global model's). Also
    the top-class probability's calibration bins (``fedrs.metrics.confidence_bin_sums``: the ECE)
    and, with ``temperatures``, the cross-entropy again for the logits divided by each (temperature
    scaling: what a client sends), and their bins too with ``calibration_by_temperature`` (the
    evaluation's ECE before a model's temperature)."""

    labels: np.ndarray
    temperatures: tuple[float, ...] = ()
    calibration_by_temperature: bool = False
    total: float = 0.0
    count: int = 0
    bins: np.ndarray = field(default_factory=lambda: np.zeros((3, CONFIDENCE_BINS)))
    by_temperature: np.ndarray = field(default_factory=lambda: np.zeros(0))  # summed cross-entropy at each
    bins_by_temperature: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, CONFIDENCE_BINS)))

    def __post_init__(self) -> None:
        self.by_temperature = np.zeros(len(self.temperatures))
        self.bins_by_temperature = np.zeros((len(self.temperatures), 3, CONFIDENCE_BINS))

    def add(self, logits: torch.Tensor, rows: slice) -> None:
        target = torch.as_tensor(np.asarray(self.labels[rows]), dtype=torch.long, device=logits.device)
        logits = logits.float()
        self.total += float(F.cross_entropy(logits, target, reduction="sum").double())
        self.count += int(target.numel())
        self.bins += self._bins(logits, target)
        # float32, as the model's own loss above: the kernels strict mode makes agree across CPU kinds
        for i, temperature in enumerate(self.temperatures):
            scaled = logits / temperature
            self.by_temperature[i] += float(F.cross_entropy(scaled, target, reduction="sum").double())
            if self.calibration_by_temperature:
                self.bins_by_temperature[i] += self._bins(scaled, target)

    @staticmethod
    def _bins(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        confidence, predicted = F.softmax(logits, dim=1).max(dim=1)
        return confidence_bin_sums(confidence.cpu().numpy(), (predicted == target).cpu().numpy())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def ece(self) -> float:
        return expected_calibration_error(self.bins)


def predict_batches(n: int, cfg: TrainConfig, logits_of: Callable[[slice, torch.device], torch.Tensor],
                    tally: CrossEntropyTally | None = None) -> np.ndarray:
    """Class predictions of ``n`` samples in batches of ``cfg.eval_batch_size`` under the precision
    policy; ``logits_of(slice, device)`` scores one batch (the model is already in eval mode);
    ``tally``: their cross-entropy is added to it."""
    policy = cfg.policy()
    out = np.empty(n, dtype=np.int64)
    with torch.inference_mode():
        for sl in inference_batches(n, cfg.eval_batch_size):
            with policy.autocast():
                logits = logits_of(sl, policy.device)
            out[sl] = logits.float().argmax(1).cpu().numpy()
            if tally is not None:
                tally.add(logits, sl)
    return out


def predict(
    model: nn.Module,
    data: dict[str, Any],
    modalities: tuple[str, ...],
    cfg: TrainConfig,
    forward: dict[str, Any] | None = None,
    tally: CrossEntropyTally | None = None,
) -> np.ndarray:
    """Class predictions for every sample of ``data`` using only ``modalities`` (others absent);
    ``forward`` holds extra keyword arguments of the model's forward (e.g. ``zero_fill``)."""
    model.to(cfg.policy().device).eval()
    n = len(data["labels"]) if "labels" in data else len(next(data[m] for m in modalities if m in data))
    return predict_batches(
        n, cfg, lambda sl, device: model(**batch_inputs(data, sl, modalities, device), **(forward or {})), tally
    )
