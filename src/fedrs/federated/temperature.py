"""Temperature scaling of the final model (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017), federated.

Why: classifier calibration (CCVR) retrains the last layer on virtual features until their
cross-entropy is small; on held-out Houston ROIs that layer's logits come out over-confident — the
final validation cross-entropy rose over round 14's in 15 of 25 whole-ROI runs while the OA rose
(docs/houston-dev.md). One scalar T > 0 divides the logits: the predicted class of every pixel stays
what it was (OA, AA, κ and every map unchanged; under bf16 the divided weights round afresh and a
near-tied pixel may change, as between bf16 and fp32), the probabilities become scores one can read.

Federated: each client that scores validation pixels sends, beside its confusion counts, its summed
cross-entropy at every temperature of a fixed log-spaced grid; the server adds the curves, takes
the grid's minimum and refines it by a parabola through its neighbours (in log T), and divides the
last layer's weight and bias by T — the model itself carries the temperature, so every consumer of
its logits (the evaluation, the maps, the registered MLflow model) sees the scaled probabilities.
T is fitted on the validation pixels, so the final validation cross-entropy is in-sample for one
parameter (on Houston's whole-ROI folds about 0.03 nats below a T fitted on other folds: the
held-out check of ``bench/temperature_check.py``); the test pixels say what it buys. Centralized
training fits T the same way on its validation pixels; local (per-client) runs fit none.

Plain functions over arrays and tensors: the grid, the fit, the scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedrs.config import from_mapping


@dataclass(frozen=True)
class TemperatureConfig:
    lowest: float = 0.05   # the grid's ends; a fit at either end is reported (the grid was too narrow)
    highest: float = 20.0
    points: int = 61       # log-spaced: neighbours 10 % apart at the defaults

    def __post_init__(self) -> None:
        if not (0 < float(self.lowest) < 1 < float(self.highest)):
            raise ValueError(f"temperature: lowest {self.lowest!r} and highest {self.highest!r}; expected "
                             "0 < lowest < 1 < highest (T = 1, the model as trained, must lie inside)")
        if int(self.points) < 3:
            raise ValueError(f"temperature: points {self.points!r}; expected at least 3")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TemperatureConfig:
        return from_mapping(cls, d or {}, label="temperature")

    def grid(self) -> tuple[float, ...]:
        return tuple(float(t) for t in np.geomspace(self.lowest, self.highest, int(self.points)))


def fit_temperature(grid: tuple[float, ...] | list[float], loss: np.ndarray) -> tuple[float, bool]:
    """The temperature minimising ``loss`` (the summed cross-entropy at each temperature of ``grid``,
    ascending): the grid's minimum, refined by the vertex of the parabola through it and its two
    neighbours in log T (kept within them), to four significant digits; and whether the minimum
    lay inside the grid."""
    grid_ = np.log(np.asarray(grid, dtype=np.float64))
    loss = np.asarray(loss, dtype=np.float64)
    if grid_.shape != loss.shape or grid_.size < 3:
        raise ValueError(f"temperature: {loss.size} losses for {grid_.size} temperatures; expected one each, ≥ 3")
    if not np.isfinite(loss).all():
        raise ValueError("temperature: a client sent a non-finite cross-entropy; no temperature is fitted")
    i = int(np.argmin(loss))
    if i in (0, len(loss) - 1):
        return significant(math.exp(grid_[i])), False
    left, centre, right = loss[i - 1: i + 2]
    curvature = left - 2 * centre + right
    step = (grid_[i + 1] - grid_[i - 1]) / 2
    offset = 0.5 * step * (left - right) / curvature if curvature > 0 else 0.0
    return significant(math.exp(grid_[i] + float(np.clip(offset, -step, step)))), True


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits: the fit is no finer than that, and a last-bit
    difference in the curve (another CPU's exp) is very unlikely to move the T a model is divided by
    (only a fit within a last bit of a rounding boundary, or a near-tie at the grid's minimum, would)."""
    return float(f"{value:.{digits - 1}e}")


def scale_layer(weight: torch.Tensor, bias: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's weight and bias divided by ``temperature``: its logits divided by it."""
    if not temperature > 0:
        raise ValueError(f"temperature: {temperature!r}; expected > 0")
    return weight / temperature, bias / temperature


def apply_temperature(state: dict[str, torch.Tensor], layer: str, grid: tuple[float, ...], curve: np.ndarray
                      ) -> dict[str, Any]:
    """Fit T to ``curve`` (the validation cross-entropy at each temperature of ``grid``) and divide
    ``layer``'s weight and bias in ``state`` by it, in place; what the history keeps of it (T,
    whether it lay inside the grid, the curve itself — the validation loss at any T, for judging a T
    fitted elsewhere on these pixels). A curve that is not finite everywhere (a diverged model) fits
    nothing: ``state`` stays and the answer is empty — a run's training is not thrown away for want
    of a temperature."""
    if not np.isfinite(curve).all():
        return {}
    temperature, inside = fit_temperature(grid, curve)
    state[f"{layer}.weight"], state[f"{layer}.bias"] = scale_layer(state[f"{layer}.weight"], state[f"{layer}.bias"],
                                                                   temperature)
    return {"temperature": temperature, "temperature_inside_grid": inside, "temperature_grid": list(grid),
            "val_loss_by_temperature": [float(v) for v in curve]}
