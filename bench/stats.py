"""Intervals for benchmark tables: a row's mean over seeds, and a method against a baseline as a
paired difference over the same seeds and the same test examples.

Both work on fractions (0.853, not 85.3); the tables multiply by 100.

* `mean_ci(values)`: mean over seeds with a Student-t 95% half-width (the seeds are the only
  repetition a row has; with 3 seeds t = 4.30, so the interval is honest about how little
  three runs say).
* `paired_bootstrap(a, b)`: a[s][i] and b[s][i] are 1 when seed s's model got test example i
  right. Each bootstrap replicate draws seeds with replacement and, independently, examples with
  replacement, and takes mean(a) - mean(b) over the drawn cells; the interval is the 2.5 and 97.5
  percentiles. Resampling both captures the two sources of noise a reader cares about: another
  training seed and another test set from the same distribution. Pairing (the same cells on both
  sides) removes what the two methods share, such as the hard examples, so a real gap smaller
  than either row's own interval can still show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 97.5% quantiles of Student's t by degrees of freedom (no scipy dependency).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def t_quantile(dof: int) -> float:
    if dof < 1:
        return math.nan
    if dof in _T975:
        return _T975[dof]
    # Cornish-Fisher expansion around the normal quantile: within 0.005 of the exact value.
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% interval); the half-width is NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan
    return mean, t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)


def paired_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean difference a - b, 2.5th percentile, 97.5th percentile) over seeds x examples."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ValueError(f"need two equal (seeds, examples) arrays, got {x.shape} and {y.shape}")
    diff = x - y
    seeds, examples = diff.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    # Row sums per drawn example set, then average over drawn seeds: memory stays O(seeds x n).
    for i in range(n_boot):
        rows = rng.integers(0, seeds, seeds)
        cols = rng.integers(0, examples, examples)
        stats[i] = diff[np.ix_(rows, cols)].mean()
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def fmt_mean_ci(values: Sequence[float]) -> str:
    """'85.3 ± 1.2' in percent (± the 95% half-width), or '85.3' for a single value."""
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f}" if math.isnan(half) else f"{100 * mean:.1f} ± {100 * half:.1f}"


def fmt_diff(diff: tuple[float, float, float]) -> str:
    """'+1.2 [+0.3, +2.1]' in points; the verdict is left to the reader of the interval."""
    mean, lo, hi = diff
    return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
