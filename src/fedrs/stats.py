"""Statistics for results tables over seeds: mean ± standard deviation, and the paired comparison
of two methods run on the same seeds (same partitions, splits and initialisations), with a
Student-t 95% interval of the mean difference. A claim whose interval contains 0 is written
"level with" — never "better than"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats as scipy_stats

from fedrs.errors import InputError


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise InputError("no values to summarise")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


@dataclass(frozen=True)
class PairedComparison:
    """``a − b`` over the seeds both were run on."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "not measured (one seed)"
        if self.low > 0:
            return "better than"
        if self.high < 0:
            return "worse than"
        return "level with"

    def describe(self, a: str, b: str, scale: float = 100.0, unit: str = " points", runs: str = "seeds") -> str:
        """E.g. "feddiff is level with fedavg (+1.8 points, 95% interval −2.1 … +5.7, 5 seeds)";
        ``runs`` names what was paired (seeds, or runs of seed × cross-validation fold)."""
        if self.n < 2:
            return f"{a} against {b}: {self.mean * scale:+.1f}{unit} on one {runs.rstrip('s')} (no interval)"
        return (f"{a} is {self.verdict} {b} ({self.mean * scale:+.1f}{unit}, {self.confidence:.0%} interval "
                f"{self.low * scale:+.1f} … {self.high * scale:+.1f}, {self.n} {runs})")


def paired_interval(a: dict[Any, float], b: dict[Any, float], confidence: float = 0.95) -> PairedComparison:
    """The mean of ``a[s] − b[s]`` over the seeds ``s`` present in both, with its two-sided Student-t
    ``confidence`` interval (n − 1 degrees of freedom)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise InputError(f"no seed in common between {sorted(a)} and {sorted(b)}: a paired comparison needs "
                         "both methods run on the same seeds")
    diffs = [a[s] - b[s] for s in seeds]
    mean, sd = mean_sd(diffs)
    if len(diffs) == 1:
        return PairedComparison(mean, -math.inf, math.inf, 1, confidence)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return PairedComparison(mean, mean - half, mean + half, len(diffs), confidence)
