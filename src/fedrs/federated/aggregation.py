"""Server-side aggregation and update screening: plain functions over tensors.

``aggregate_modality_aware`` is sample-weighted FedAvg in which a parameter owned by modality m is
averaged only over the clients that hold m; a parameter nobody contributed keeps its global value.
Ownership comes from a function (``owner(name) -> modality | None``), so FedDiff and FedCMI reuse
this with their own naming. BatchNorm running variances are pooled, not averaged: the variance
of the union of the clients' pixels includes the spread of their means (``pooled_variance``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

State = dict[str, torch.Tensor]
Owner = Callable[[str], "str | None"]


@dataclass
class ClientUpdate:
    client_id: int
    state: State               # only the tensors this client trained and sent
    num_samples: int
    modalities: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict)


def aggregate_modality_aware(
    global_state: State, updates: list[ClientUpdate], owner: Owner
) -> tuple[State, dict[str, int]]:
    """Weighted average per tensor over its eligible contributors; returns (state, contributors)."""
    new_state: State = {}
    contributors: dict[str, int] = {}
    for name, current in global_state.items():
        eligible = holders_of(name, updates, owner)
        contributors[name] = len(eligible)
        kept = unaveraged(name, current, eligible)
        if kept is not None:
            new_state[name] = kept
            continue
        total = float(sum(u.num_samples for u in eligible))
        weights = [u.num_samples / total for u in eligible]
        mean_name = name.removesuffix("running_var") + "running_mean"
        if name.endswith("running_var") and all(mean_name in u.state for u in eligible):
            new_state[name] = pooled_variance([u.state[mean_name] for u in eligible],
                                              [u.state[name] for u in eligible], weights).to(current.dtype)
            continue
        acc = torch.zeros_like(current, dtype=torch.float64)
        for w, u in zip(weights, eligible, strict=True):
            acc += w * u.state[name].to(torch.float64)
        new_state[name] = acc.to(current.dtype)
    return new_state, contributors


def holders_of(name: str, updates: list[ClientUpdate], owner: Owner) -> list[ClientUpdate]:
    """The updates that carry tensor ``name`` and hold the modality owning it."""
    modality = owner(name)
    return [u for u in updates if name in u.state and (modality is None or modality in u.modalities)]


def unaveraged(name: str, current: torch.Tensor, eligible: list[ClientUpdate]) -> torch.Tensor | None:
    """The new value of a tensor that is not averaged: nobody contributed (it keeps its global
    value), or a counter such as BatchNorm's num_batches_tracked (the largest); None otherwise."""
    if not eligible:
        return current.clone()
    if not torch.is_floating_point(current):
        return torch.stack([u.state[name] for u in eligible]).max(dim=0).values.to(current.dtype)
    return None


def pooled_variance(means: list[torch.Tensor], variances: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Variance of a mixture with these component means, variances and weights (summing to 1):
    Σ w·(var + (mean − pooled mean)²). Averaging the variances alone drops the second term, which on
    class-disjoint clients is large — and the global model then normalises with too small a scale."""
    w = torch.tensor(weights, dtype=torch.float64).view(-1, *([1] * means[0].ndim))
    m, v = torch.stack(means).to(torch.float64), torch.stack(variances).to(torch.float64)
    pooled_mean = (w * m).sum(0)
    return (w * (v + (m - pooled_mean) ** 2)).sum(0)


def update_norm(update: State, global_state: State) -> float:
    """L2 norm of (update − global) over the floating-point tensors the update carries."""
    total = 0.0
    for name, tensor in update.items():
        if torch.is_floating_point(tensor) and name in global_state:
            total += float((tensor.double() - global_state[name].double()).pow(2).sum())
    return total**0.5


def screen_updates(
    updates: list[ClientUpdate], global_state: State, outlier_factor: float, max_norm: float | None = None
) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
    """Split into (accepted, rejected-with-reason): non-finite values, or an update norm above
    ``max_norm`` or above ``outlier_factor`` × the round's median norm (with three or more updates)."""
    rejected: list[tuple[int, str]] = []
    finite: list[ClientUpdate] = []
    for u in updates:
        bad = next(
            (name for name, t in u.state.items() if torch.is_floating_point(t) and not torch.isfinite(t).all()), None
        )
        if bad is not None:
            rejected.append((u.client_id, f"non-finite values in {bad}"))
        elif set(u.state) - set(global_state):
            rejected.append((u.client_id, f"unknown tensors {sorted(set(u.state) - set(global_state))[:3]}"))
        else:
            finite.append(u)
    norms = {u.client_id: update_norm(u.state, global_state) for u in finite}
    median = float(torch.tensor(list(norms.values())).median()) if len(norms) >= 3 else None
    accepted = []
    for u in finite:
        n = norms[u.client_id]
        if max_norm is not None and n > max_norm:
            rejected.append((u.client_id, f"update norm {n:.3g} above max_update_norm {max_norm:.3g}"))
        elif median is not None and median > 0 and n > outlier_factor * median:
            rejected.append((u.client_id, f"update norm {n:.3g} above {outlier_factor} × median {median:.3g}"))
        else:
            accepted.append(u)
    return accepted, rejected
