"""Client-level differential privacy for every weight-averaging algorithm: each client's update
(its local weights minus the global weights it started from) is clipped to L2 norm ``C``, the
clipped updates are averaged with equal weights, and Gaussian noise of standard deviation σ·C/n is
added to each average — DP-FedAvg (McMahan et al., ICLR 2018), with fixed clipping as in Flower's
``DifferentialPrivacy{Server,Client}SideFixedClipping``, whose clipping and noise-scale functions
this module calls (``flwr.supercore.differential_privacy``).

Modality-aware averaging composes: a tensor owned by one modality is averaged over the n_g clients
that hold it, so its noise is σ·C/n_g. One client changes the vector of per-group sums by at most C
in L2 norm (its whole clipped update), so noise σ·C on every sum — σ·C/n_g on every mean — is the
Gaussian mechanism with multiplier σ over the whole model. Every released aggregate counts, the
statistics pass (BatchNorm statistics) included.

Where the clipping happens (``clipping``): ``server`` (the server clips what it receives) or
``client`` (each client clips before it uploads, so the server never holds an unclipped update);
the noise is always added by the server, once, to the aggregate. Sample counts are not used as
weights: they would let one client's influence exceed C.

The budget: the RDP accountant of Opacus (``opacus.accountants.RDPAccountant``), one step per
released aggregate with sampling rate = clients per round ÷ eligible clients (sampling here is
uniform without replacement; the Poisson-subsampling analysis is the usual approximation and is
exact at rate 1, every client every round — this project's default).

The noise: every release draws it value by value from the operating system's CSPRNG
(``fedrs.federated.noise``), drawn by whoever adds the noise — the server for the aggregate, the client
for its exchanged outputs — and never derived from the run's seed, which every participant knows
(it travels in every message): with a seed-derived generator any organisation could regenerate the
noise and subtract it. ``deterministic_noise: true`` (tests only) derives it from the run seed
instead; such a run reports "noise: deterministic — no privacy" in its history, MLflow and report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv, get_norm

from fedrs.config import from_mapping
from fedrs.federated.aggregation import ClientUpdate, Owner, State, holders_of, unaveraged
from fedrs.federated.noise import Noise, gaussian
from fedrs.federated.record_privacy import RecordPrivacy, check_gaussian

CLIPPING_SITES = ("server", "client")
DETERMINISTIC = "deterministic — no privacy"  # what a run with deterministic noise says of itself


@dataclass(frozen=True)
class PrivacyConfig:
    noise_multiplier: float         # σ: noise std in units of the clipping norm (0: clipping only, no guarantee)
    clipping_norm: float            # C: the largest L2 norm of one client's update
    clipping: str = "server"        # server | client
    delta: float = 1e-5             # δ of the (ε, δ) reported
    deterministic_noise: bool = False  # tests only: noise from the run seed, so anyone can remove it

    def __post_init__(self) -> None:
        if self.clipping not in CLIPPING_SITES:
            raise ValueError(f"privacy.clipping is {self.clipping!r}; expected one of {list(CLIPPING_SITES)}")
        check_gaussian("privacy", self.noise_multiplier, self.clipping_norm, self.delta)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacyConfig:
        return from_mapping(cls, d, label="privacy")

    @property
    def noised(self) -> bool:
        """Whether the releases carry noise: then nothing data-dependent leaves a client, or the
        server's history, except what the noised release itself makes public (``public_metrics``)."""
        return self.noise_multiplier > 0


# what a client's reply may say of its round under DP with noise: counts, sizes and time — not its
# loss, its metrics or its update's norm, which the accountant does not count
PUBLIC_UNDER_DP = ("client_id", "num_samples", "bytes_dense", "bytes_sent", "compute_seconds", "dp_steps",
                   "exchange_noise_std")


def noised_releases(settings: dict[str, Any]) -> bool:
    """Whether a run's releases carry DP noise — client-level (``privacy``) or record-level
    (``train.record_privacy``): then a client's replies carry only ``PUBLIC_UNDER_DP``."""
    privacy, record = settings.get("privacy"), (settings.get("train") or {}).get("record_privacy")
    return bool(privacy and PrivacyConfig.from_dict(privacy).noised) or bool(
        record and RecordPrivacy.from_dict(record).noise_multiplier > 0)


def public_metrics(metrics: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as a client may send them under the run's ``settings``: all of them without
    noised DP, else ``PUBLIC_UNDER_DP``."""
    if not noised_releases(settings):
        return metrics
    return {k: v for k, v in metrics.items() if k in PUBLIC_UNDER_DP}


def _floating(state: State, reference: State) -> list[str]:
    return [k for k, v in state.items() if torch.is_floating_point(v) and k in reference]


def clip_update(state: State, reference: State, clipping_norm: float) -> tuple[State, float]:
    """``state`` moved so that ``state − reference`` (over its floating-point tensors) has L2 norm at
    most ``clipping_norm``; returns the clipped state and the update's norm before clipping."""
    names = _floating(state, reference)
    local = [state[k].detach().cpu().double().numpy() for k in names]
    base = [reference[k].detach().cpu().double().numpy() for k in names]
    norm = get_norm([a - b for a, b in zip(local, base, strict=True)])
    if norm == 0.0:  # nothing moved (Flower's clip would divide by this norm)
        return dict(state), 0.0
    compute_clip_model_update(local, base, clipping_norm)  # local ← base + clip(local − base)
    clipped = dict(state)
    for k, value in zip(names, local, strict=True):
        clipped[k] = torch.from_numpy(np.asarray(value)).to(state[k].dtype)
    return clipped, norm


def private_aggregate(global_state: State, updates: list[ClientUpdate], owner: Owner, cfg: PrivacyConfig,
                      generator: Noise) -> tuple[State, dict[str, Any]]:
    """The DP aggregate of ``updates``: clip each (a no-op for client-clipped ones), average the
    clipped updates with equal weights per tensor over the clients holding its modality, add
    N(0, (σ·C/n_g)²). Returns the new state and what was done (norms, clipped, noise stds)."""
    clipped, norms = [], []
    for u in updates:
        state, norm = clip_update(u.state, global_state, cfg.clipping_norm)
        clipped.append(ClientUpdate(u.client_id, state, u.num_samples, u.modalities, u.metrics))
        norms.append(norm)
    new_state: State = {}
    stds: set[float] = set()
    for name, current in global_state.items():
        eligible = holders_of(name, clipped, owner)
        kept = unaveraged(name, current, eligible)
        if kept is not None:
            new_state[name] = kept
            continue
        mean = torch.stack([u.state[name].double() - current.double() for u in eligible]).mean(dim=0)
        std = compute_stdv(cfg.noise_multiplier, cfg.clipping_norm, len(eligible))
        stds.add(std)
        noise = gaussian(mean.shape, generator) * std
        value = current.double() + mean + noise
        if name.endswith("running_var"):
            value = value.clamp_min(0.0)  # noise may push a variance below zero
        new_state[name] = value.to(current.dtype)
    report = {"update_norms": norms, "clipped": sum(n > cfg.clipping_norm for n in norms),
              "noise_std_max": max(stds, default=0.0), "noise_std_min": min(stds, default=0.0)}
    return new_state, report


def epsilon_spent(releases: list[tuple[float, float]] | list[tuple[float, float, int]], delta: float) -> float:
    """ε after the releases ``[(noise multiplier, sampling rate[, steps]), …]`` at ``delta``
    (Opacus' RDP accountant; steps default to 1); infinite when any release carried no noise."""
    if not releases:
        return 0.0
    if any(r[0] <= 0 for r in releases):
        return float("inf")
    from opacus.accountants import RDPAccountant

    # releases of the same (σ, q) compose as one entry of their summed steps (RDP adds up): the
    # accountant's cost is per entry, and a run repeats the same release every round
    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        key = (float(r[0]), float(r[1]))
        steps[key] = steps.get(key, 0) + (int(r[2]) if len(r) > 2 else 1)
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, n) for (sigma, rate), n in steps.items()]
    return float(accountant.get_epsilon(delta=delta))


@dataclass(frozen=True)
class ExchangeProtection:
    """Clipping and Gaussian noise on FedDiff's relayed branch outputs, per pixel: all outputs of
    one pixel (its CNN and diffusion-path maps) are clipped jointly to L2 norm ``clipping_norm`` and
    each value gets N(0, (noise_multiplier · clipping_norm)²) before the codec. A defence against
    inverting the outputs back to the pixel's patch (measured by ``bench/exchange_attack.py``); it
    is not an (ε, δ) guarantee — a pixel's outputs are released every round."""

    clipping_norm: float
    noise_multiplier: float = 0.0
    deterministic_noise: bool = False  # tests only: noise from the run seed, so the partner can remove it

    def __post_init__(self) -> None:
        check_gaussian("exchange_privacy", self.noise_multiplier, self.clipping_norm)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExchangeProtection:
        return from_mapping(cls, d, label="exchange_privacy")


def protect_exchange(outputs: dict[str, torch.Tensor], cfg: ExchangeProtection, generator: Noise
                     ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-pixel clipped, noised copies of ``outputs`` (tensors [N, …] over the same N pixels)."""
    names = sorted(outputs)
    flat = torch.cat([outputs[k].double().reshape(len(outputs[k]), -1) for k in names], dim=1)
    norms = flat.norm(dim=1)
    scale = torch.clamp(cfg.clipping_norm / norms.clamp_min(1e-12), max=1.0)
    std = cfg.noise_multiplier * cfg.clipping_norm
    protected = {}
    for k in names:
        value = outputs[k].double() * scale.view(-1, *([1] * (outputs[k].ndim - 1)))
        if std > 0:
            value = value + gaussian(value.shape, generator) * std
        protected[k] = value.to(outputs[k].dtype)
    return protected, {"exchange_clipped_fraction": float((norms > cfg.clipping_norm).double().mean()) if len(norms)
                       else 0.0, "exchange_norm_median": float(norms.median()) if len(norms) else 0.0,
                       "exchange_noise_std": std}
