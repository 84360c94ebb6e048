"""How sure a mean accuracy, or a difference of two, can be when both training seeds and test examples vary.

The unit of replication is the training seed, and every seed of a study is scored on the same test examples,
so seeds and examples are crossed. A matrix Y (examples x seeds) of correctness values, or of paired
differences in correctness, is modelled as

    Y[i, s] = mu + u[s] + v[i] + e[i, s]      u: seed effect, v: example effect, e: the rest

and its mean has the variance  var(u)/k + var(v)/n + var(e)/(k n)  (k seeds, n examples). The components come
from the two-way ANOVA mean squares (exact expectations in this balanced design). The degrees of freedom are
the seed term's, k - 1 (2 for three seeds), whatever the test-set term adds to the variance: Satterthwaite's
formula would add the test-set term's n - 1 and so, at few seeds, give an interval narrower than the seeds
alone support (4.9 df at k = 3 on a committed study, with false holds 1.3-3.8x the nominal rate). With one
seed there is no seed variance to see: the interval is test-set noise only, and no claim rests on it.

Written out rather than fitted with a mixed-model library: in a balanced crossed design the moment estimates
are closed-form, and statsmodels' MixedLM gives neither these degrees of freedom nor a power figure.
Power uses scipy's noncentral t at the planned (seeds, examples), with the same correction and degrees of
freedom a verdict would get. Student t and the noncentral t are called through scipy.special (stdtr, stdtrit,
nctdtr), the functions scipy.stats computes with, without its per-call checks: the planner and the verdict
simulations call them by the thousand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import special, stats

LEVEL = 0.95  # the table's intervals
POWER = 0.8  # what the planner aims for
MAX_SEEDS = 1000  # the planner's search stops here ("more than 1,000 seeds")


@dataclass(frozen=True)
class Crossed:
    """The mean of an examples x seeds matrix with the variance components of the crossed model, each a
    variance of one cell's value (proportions, not percent)."""

    mean: float
    seeds: int
    examples: int
    seed_var: float  # var(u): how far seeds' means scatter beyond what their example noise explains
    example_var: float  # var(v): how much examples differ, shared by every seed
    residual_var: float  # var(e)
    per_seed: tuple[float, ...]  # each seed's mean

    @classmethod
    def fit(cls, matrix: np.ndarray) -> Crossed:
        y = np.asarray(matrix, dtype=float)
        n, k = y.shape
        seed_means, example_means, grand = y.mean(axis=0), y.mean(axis=1), float(y.mean())
        ms_example = k * example_means.var(ddof=1) if n > 1 else 0.0
        if k == 1:  # no seed variance to estimate: the examples' spread is all there is
            return cls(grand, 1, n, math.nan, ms_example, 0.0, (grand,))
        ms_seed = n * seed_means.var(ddof=1)
        resid = y - example_means[:, None] - seed_means[None, :] + grand
        ms_resid = float((resid**2).sum()) / ((n - 1) * (k - 1))
        return cls(
            mean=grand,
            seeds=k,
            examples=n,
            seed_var=max(0.0, (ms_seed - ms_resid) / n),
            example_var=max(0.0, (ms_example - ms_resid) / k),
            residual_var=ms_resid,
            per_seed=tuple(float(m) for m in seed_means),
        )

    def se_df(self, seeds: int | None = None, examples: float | None = None) -> tuple[float, float]:
        """Standard error of the mean and its degrees of freedom (the seeds'), for this study or for one of
        `seeds` x `examples` with the same variance components (examples=math.inf: a test set without
        sampling error)."""
        k, n = seeds or self.seeds, examples or self.examples
        if k == 1:
            return math.sqrt(self.example_var / n), n - 1
        # var(mean): the seeds' mean square / (k n), kept even where the seeds scatter no more than the
        # residual explains (pooling it away would trust 2 df of evidence that seeds do not matter), plus the
        # examples' share; the seed term, estimated on k - 1 df, sets the degrees of freedom
        var = self.seed_var / k + self.residual_var / (k * n)
        if math.isfinite(n):
            var += self.example_var / n
        if var <= 0:  # every cell the same: nothing varies
            return 0.0, math.inf
        return math.sqrt(var), k - 1

    def with_seed_var_bound(self, level: float) -> Crossed:
        """These components with the seed term at the upper `level` confidence bound of its chi-square
        estimate (on k - 1 df): what a planner sizes with, since at 2 df the estimate itself can be far too
        small (or zero)."""
        per_seed = self.seed_var + self.residual_var / self.examples  # what one seed's mean scatters by
        upper = (self.seeds - 1) * per_seed / stats.chi2.ppf(1 - level, self.seeds - 1)
        return replace(self, seed_var=upper - self.residual_var / self.examples)

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t interval of the mean at `level`."""
        se, df = self.se_df()
        half = special.stdtrit(df, (1 + level) / 2) * se if se > 0 else 0.0
        return self.mean - half, self.mean + half

    def p_above(self, threshold: float) -> float:
        """One-sided p-value of the null `mean <= threshold` against `mean > threshold`."""
        se, df = self.se_df()
        if se == 0:
            return 0.0 if self.mean > threshold else 1.0
        return float(special.stdtr(df, (threshold - self.mean) / se))

    def p_below(self, threshold: float) -> float:
        """One-sided p-value of the null `mean >= threshold` against `mean < threshold`."""
        se, df = self.se_df()
        if se == 0:
            return 0.0 if self.mean < threshold else 1.0
        return float(special.stdtr(df, (self.mean - threshold) / se))

    def power_one_sided(self, effect: float, alpha: float, seeds: int, examples: float) -> float:
        """Chance that a one-sided t test at `alpha` finds a true `effect` (beyond its threshold) in a study
        of `seeds` x `examples` with these variance components."""
        se, df = self.se_df(seeds, examples)
        if se == 0:
            return 1.0
        return 1.0 - float(special.nctdtr(df, effect / se, special.stdtrit(df, 1 - alpha)))


def seeds_needed(power_at, current: int) -> int | None:
    """The fewest seeds, never fewer than `current`, at which `power_at(seeds)` reaches POWER; None when even
    MAX_SEEDS do not. Power grows with seeds, so a doubling search then a bisection finds it."""
    low = max(current, 2)
    if power_at(low) >= POWER:
        return low
    high = low
    while power_at(high) < POWER:
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= POWER else (mid, high)
    return high


def t_interval(per_seed: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student t interval over per-seed values alone: for records without predictions (read from wandb)."""
    n, mean = len(per_seed), float(np.mean(per_seed))
    half = special.stdtrit(n - 1, (1 + level) / 2) * np.std(per_seed, ddof=1) / math.sqrt(n)
    return mean - half, mean + half
