"""A study's plan, fixed before the data it judges: experiments/<study>/plan*.yaml.

It names the results folder it governs, the most seeds a row gets (`max_seeds`), the seed counts at which the
claims are read (`looks`), the family-wise `alpha`, how that alpha is spent over the looks, and each `better`
claim's smallest effect of interest (what the planner sizes for). The findings cite the file's sha256.

Spending: a claim judged at level a (alpha over the claims in the family: Bonferroni) spends a over the looks
by the Lan-DeMets O'Brien-Fleming-type function f(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t)), t = seeds / max_seeds,
so look j tests at f(t_j) - f(t_{j-1}). The looks are combined by the union bound: the chance of any false
verdict over all looks is at most the sum, a, whatever the degrees of freedom, at some cost in power against
one look at max_seeds (Lan & DeMets 1983, Biometrika 70:659; Jennison & Turnbull 2000, ch. 7). Looks are taken
on the first `looks[j]` seeds in seed order, so a look's data are fixed once those seeds exist, and rerunning
the analysis rebuilds the same ledger.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

from lora_lab.config import EXPERIMENTS_DIR, is_int, is_number

REQUIRED = ("version", "study", "results", "claims", "alpha", "max_seeds", "looks", "spending")
OPTIONAL = ("learning_rates", "unit", "test", "futility", "smallest_effects_pp", "excluded")


def obrien_fleming(t: float, a: float) -> float:
    """The share of `a` spent by information fraction t (0 < t <= 1); f(1) = a."""
    return 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - a / 2) / math.sqrt(t))


SPENDING = {"obrien_fleming_union": obrien_fleming}


@dataclass(frozen=True)
class Plan:
    file: str  # the plan's path, relative to the repository
    sha256: str
    claims: str  # the claims file it judges, relative to the repository
    version: int
    alpha: float
    max_seeds: int
    looks: tuple[int, ...]
    spending: str
    smallest_effects_pp: dict
    excluded: dict
    committed: str | None  # when git first recorded the file (ISO date), None outside a git checkout

    def levels(self, a: float) -> list[float]:
        """Each look's one-sided level, out of a claim's level `a`."""
        spent = [SPENDING[self.spending](k / self.max_seeds, a) for k in self.looks]
        return [now - before for now, before in zip(spent, [0.0, *spent[:-1]], strict=True)]

    def power(self, a: float, effect_sd: float, sims: int = 20_000, seed: int = 0) -> dict[str, float]:
        """Simulated power of a one-sided claim at level `a` whose per-seed paired differences are normal with
        mean `effect_sd` seed standard deviations, judged as the engine judges it when seeds decide (a t test
        on k - 1 degrees of freedom): at the plan's looks, stopping at the first that decides, and at one
        look at max_seeds. Also the seeds a row runs on average under the looks (a decided claim stops)."""
        d = np.random.default_rng(seed).normal(effect_sd, 1.0, (sims, self.max_seeds))

        def holds(k: int, level: float) -> np.ndarray:
            x = d[:, :k]
            t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(k))
            return stats.t.sf(t, k - 1) < level

        decided: np.ndarray = np.zeros(sims, dtype=bool)
        seeds = np.full(sims, float(self.max_seeds))
        for k, level in zip(self.looks, self.levels(a), strict=True):
            now = ~decided & holds(k, level)
            seeds[now], decided = k, decided | now
        return {
            "looks": float(decided.mean()),
            "one_look": float(holds(self.max_seeds, a).mean()),
            "mean_seeds": float(seeds.mean()),
        }


def load_plan(results: str | Path) -> Plan | None:
    """The plan whose `results` is this folder, or None when no study planned it."""
    here = Path(results).resolve()
    for path in sorted(EXPERIMENTS_DIR.glob("*/plan*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(path))
        if (EXPERIMENTS_DIR.parent / str(spec.get("results", ""))).resolve() == here:
            return parse(spec, path)
    return None


def parse(spec: dict, path: Path) -> Plan:
    """A plan file checked as a claims file is: each key known, each value in range; errors name the file."""
    where = f"{path}"
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    missing = [k for k in REQUIRED if k not in spec]
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown} / missing keys {missing}; see {__name__}")
    looks = spec["looks"]
    ok = isinstance(looks, list) and looks and all(is_int(k) and k >= 2 for k in looks)
    if not ok or looks != sorted(set(looks)) or looks[-1] != spec["max_seeds"]:
        raise ValueError(f"{where}: looks={looks!r}; use increasing seed counts >= 2 ending at max_seeds")
    if not (is_number(spec["alpha"]) and 0 < spec["alpha"] < 1):
        raise ValueError(f"{where}: alpha={spec['alpha']!r}; use a level in (0, 1)")
    if spec["spending"] not in SPENDING:
        raise ValueError(f"{where}: spending={spec['spending']!r}; use one of {', '.join(SPENDING)}")
    effects = spec.get("smallest_effects_pp") or {}
    bad = {k: v for k, v in effects.items() if not (is_number(v) and v > 0)}
    if bad:
        raise ValueError(f"{where}: smallest_effects_pp {bad}; use effects > 0 (accuracy points)")
    return Plan(
        file=_shown(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        claims=str(spec["claims"]),
        version=spec["version"],
        alpha=float(spec["alpha"]),
        max_seeds=spec["max_seeds"],
        looks=tuple(looks),
        spending=spec["spending"],
        smallest_effects_pp=effects,
        excluded=spec.get("excluded") or {},
        committed=_first_commit(path),
    )


def _shown(path: Path) -> str:
    """The plan's path as findings cite it: relative to the repository when it is inside it."""
    path, root = path.resolve(), EXPERIMENTS_DIR.parent.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _first_commit(path: Path) -> str | None:
    """The date of the first commit that holds `path`: what shows the plan came before the runs it judges."""
    try:
        out = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%cI", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    dates = out.stdout.split()
    return dates[-1] if out.returncode == 0 and dates else None
