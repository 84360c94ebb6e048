"""Uncertainty of accuracies and of differences between configurations, from per-example predictions.

A configuration's runs form a matrix of correctness: one row per test example, one column per seed. Every
resampling draws from a fixed seed, so reruns give the same numbers to the last digit.

- One configuration: mean accuracy with a 95% CI, Student t over seeds when there are two or more, else a
  bootstrap over test examples.
- Two configurations scored on the same examples: the difference in accuracy (a - b) with a 95% CI from a
  paired bootstrap (examples resampled, and seed pairs too when there are several), and the p-value of a
  one-sided null from a paired permutation test over examples (scipy.stats.permutation_test: each example's
  two seed-averaged correctness values swap sides at random).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

RESAMPLES = 2000  # bootstrap draws
PERMUTATIONS = 4999  # permutation draws (exact when 2**n is fewer)
RANDOM_SEED = 0
LEVEL = 0.95
POWER = 0.8


def accuracy_ci(correct: pd.DataFrame) -> tuple[float, float, float, str]:
    """(mean, low, high, method) in percent, for a configuration's correctness matrix."""
    if correct.shape[1] >= 2:
        return t_interval(100 * correct.mean(axis=0).to_numpy())
    column = correct.iloc[:, 0].to_numpy(dtype=float)
    rng = np.random.default_rng(RANDOM_SEED)
    draws = [100 * column[rng.integers(len(column), size=len(column))].mean() for _ in range(RESAMPLES)]
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return 100 * column.mean(), float(low), float(high), f"bootstrap over {len(column):,} examples"


def t_interval(per_seed: np.ndarray) -> tuple[float, float, float, str]:
    """(mean, low, high, method) of per-seed accuracies in percent: Student t with n - 1 degrees of freedom,
    cut to [0, 100], where an accuracy lies (one collapsed seed among three otherwise reaches past 100%)."""
    n, mean = len(per_seed), float(np.mean(per_seed))
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * np.std(per_seed, ddof=1) / math.sqrt(n)
    low, high = max(mean - half, 0.0), min(mean + half, 100.0)
    cut = ", cut at 0/100" if (low, high) != (mean - half, mean + half) else ""
    return mean, low, high, f"t over {n} seeds{cut}"


@dataclass
class Difference:
    """a - b in percentage points over the examples both were scored on."""

    diff: float
    low: float
    high: float
    examples: int
    seed_pairs: int
    per_example: np.ndarray  # seed-averaged correctness difference of each example (in {-1..1})
    per_seed: np.ndarray  # accuracy difference (pp) of each seed pair

    def p_greater(self, threshold_pp: float) -> float:
        """p-value of the null `a - b <= threshold_pp` against `a - b > threshold_pp`."""
        return _permutation_p(self.per_example - threshold_pp / 100, "greater")

    def p_less(self, threshold_pp: float) -> float:
        """p-value of the null `a - b >= threshold_pp` against `a - b < threshold_pp`."""
        return _permutation_p(self.per_example - threshold_pp / 100, "less")

    def needed(self, margin_pp: float) -> tuple[int | None, int | None]:
        """Roughly how many test examples, and seeds, would show an effect of `margin_pp` beyond the claim's
        threshold with power 0.8 at a one-sided 5% level (normal approximation); None where it cannot."""
        if margin_pp <= 0:
            return None, None
        z = stats.norm.ppf(0.95) + stats.norm.ppf(POWER)
        sd_example = 100 * self.per_example.std(ddof=1)
        examples = math.ceil((z * sd_example / margin_pp) ** 2) if sd_example > 0 else None
        seeds = None
        if len(self.per_seed) >= 2 and self.per_seed.std(ddof=1) > 0:
            seeds = max(2, math.ceil((z * self.per_seed.std(ddof=1) / margin_pp) ** 2))
        return examples, seeds


def difference(a: pd.DataFrame, b: pd.DataFrame) -> Difference:
    """Paired difference of two correctness matrices (rows: example ids; columns: seeds). Seeds pair by
    number where both have them, else in sorted order; examples must be the same set."""
    if set(a.index) != set(b.index):
        raise ValueError(
            "the two configurations were scored on different test examples; they cannot be paired"
        )
    b = b.loc[a.index]
    shared = sorted(set(a.columns) & set(b.columns))
    if len(shared) == min(len(a.columns), len(b.columns)):
        a_cols, b_cols = shared, shared
    else:
        n = min(len(a.columns), len(b.columns))
        a_cols, b_cols = sorted(a.columns)[:n], sorted(b.columns)[:n]
    d = a[a_cols].to_numpy(dtype=float) - b[b_cols].to_numpy(dtype=float)  # examples x seed pairs
    rng = np.random.default_rng(RANDOM_SEED)
    n_ex, n_pairs = d.shape
    draws = np.empty(RESAMPLES)
    for i in range(RESAMPLES):
        rows = rng.integers(n_ex, size=n_ex)
        cols = rng.integers(n_pairs, size=n_pairs) if n_pairs > 1 else [0]
        draws[i] = d[rows][:, cols].mean()
    low, high = np.quantile(100 * draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Difference(
        diff=float(100 * d.mean()),
        low=float(low),
        high=float(high),
        examples=n_ex,
        seed_pairs=n_pairs,
        per_example=d.mean(axis=1),
        per_seed=100 * d.mean(axis=0),
    )


def _permutation_p(shifted: np.ndarray, alternative: str) -> float:
    """Paired sign-flip permutation test that the mean of `shifted` is 0, via scipy."""
    result = stats.permutation_test(
        (shifted, np.zeros_like(shifted)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        alternative=alternative,
        n_resamples=PERMUTATIONS,
        random_state=RANDOM_SEED,
        vectorized=True,
    )
    return float(result.pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false 'holds' across a study's claims."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
