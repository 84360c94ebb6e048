"""Spend a compute budget where a study's planned claims are still open, one look at a time.

    python -m lora_lab.study imdb_full_cpu --budget 3h --dry-run  # rounds, seeds, hours: what it reaches
    python -m lora_lab.study imdb_full_cpu --budget 3h            # run them; killed and rerun, it resumes

Each round reads the run store: the seeds each row has, each row's measured cost per run (load + train +
score, from its records), and the verdicts of the study's plan (lora_lab.analysis.plan) at the looks its seeds
reach. The rows of claims still open (not decided, and short of the plan's maximum) get the seeds that bring
them to the next look; a row shared by several claims runs once. The round runs through the runner as a sweep
(two single-threaded jobs side by side by default: the fastest way to run a sweep on a 2-core CPU), then the
study looks again. It stops when the budget cannot pay for the next round, or when no claim is open. Records
are the state: a killed study loses only its runs in flight, and the same command goes on from the store.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lora_lab import config, methods
from lora_lab.analysis import claims as claims_module
from lora_lab.analysis import correctness, findings, load_runs, summarize
from lora_lab.analysis.plan import Plan, load_plan, parse
from lora_lab.analysis.runs import NO_IMPL
from lora_lab.config import EXPERIMENTS_DIR, USER_ERRORS


def hours(text: str) -> float:
    """A budget such as 3h, 90m or 1.5h, in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([hm])", text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--budget {text}: use hours or minutes above 0, e.g. 3h, 90m or 1.5h")
    return float(match.group(1)) * (3600 if match.group(2) == "h" else 60)


@dataclass(frozen=True)
class Row:
    method: str  # the conf/method name the runner takes
    label: str  # the table's and the claims' name of the row
    has_impls: bool  # ours and PEFT are two rows of the table under one label


Side = tuple[str, str | None]  # a row of the table: label and impl (None where the method has no choice)


@dataclass(frozen=True)
class Study:
    experiment: str
    overrides: tuple[str, ...]
    results: Path
    plan: Plan
    claims: list
    rows: tuple[Row, ...]

    @classmethod
    def of(cls, experiment: str, overrides: list[str], plan_file: str | None = None) -> Study:
        cfg = config.compose([f"experiment={experiment}", *overrides])
        results = Path(cfg.results_dir) / cfg.experiment_name
        plan: Plan | None
        if plan_file:
            plan = parse(OmegaConf.to_container(OmegaConf.load(plan_file)), Path(plan_file).resolve())
        else:
            plan = load_plan(results)
        if plan is None:
            raise ValueError(
                f"no study plan governs {results}: write experiments/<study>/plan.yaml (docs/analysis.md) "
                "and commit it before the first run, or give --plan FILE"
            )
        root = Path(plan_file).parent if plan_file else EXPERIMENTS_DIR.parent
        claims = claims_module.load_claims(cfg.experiment_name, root / plan.claims) or []
        rows = []
        for method in config.sweep_rows(experiment):
            row_cfg = config.compose([f"experiment={experiment}", *overrides, f"method={method}"])
            rows.append(Row(method, methods.row_label(row_cfg), len(methods.of(row_cfg).impls) > 1))
        return cls(experiment, tuple(overrides), results, plan, claims, tuple(rows))

    def planned(self) -> list:
        """The claims the plan judges: not excluded, and naming two rows (ours = PEFT claims name none)."""
        return [c for c in self.claims if c.statement not in self.plan.excluded and c.a is not None]

    def side(self, label: str, impl: str | None) -> Side:
        return (label, impl if any(r.has_impls for r in self.rows if r.label == label) else None)

    def state(self) -> tuple[dict[Side, set[int]], dict[Side, float], pd.DataFrame | None]:
        """Seeds per row, seconds per run of each row (the mean of its records), and the findings so far."""
        try:
            runs = load_runs(self.results)
        except FileNotFoundError:
            return {}, {}, None
        groups = runs.groupby([runs["label"], runs["impl"].where(runs["impl"] != NO_IMPL, "")])
        seeds = {(label, impl or None): set(g["seed"]) for (label, impl), g in groups}
        cost = {
            (label, impl or None): float((g["load_s"].fillna(0) + g["wall_s"].fillna(0)).mean())
            for (label, impl), g in groups
        }
        pairs = [(c, self.side(c.a, c.impl_a), self.side(c.b, c.impl_b)) for c in self.planned()]
        claims = [c for c, a, b in pairs if a in seeds and b in seeds]
        if not claims:
            return seeds, cost, None
        correct = correctness(runs)
        first_run = runs["finished_at"].dropna().min()
        return seeds, cost, findings.check(claims, summarize(runs, correct), correct, self.plan, first_run)

    def next_round(self, seeds: dict[Side, set[int]], found: pd.DataFrame | None) -> dict[Side, list[int]]:
        """The rows of the claims still open (not decided, short of the plan's maximum), each with the seeds
        that bring it to its claims' next look (the lowest missing ones); a row shared by claims runs once."""
        decided = set()
        if found is not None:
            main = found[found["variant"] == ""]
            decided = set(main.loc[main["verdict"].isin(["holds", "contradicted"]), "claim"])
        wanted: dict[Side, int] = {}
        for claim in self.planned():
            if claim.statement in decided:
                continue
            pair = (self.side(claim.a, claim.impl_a), self.side(claim.b, claim.impl_b))
            have = min(len(seeds.get(side, ())) for side in pair)
            look = next((k for k in self.plan.looks if k > have), None)
            if look is None:  # at the plan's maximum: nothing more to spend on it
                continue
            for side in pair:
                wanted[side] = max(wanted.get(side, 0), look)
        need = {}
        for side, look in wanted.items():
            ran = seeds.get(side, set())
            missing = [s for s in range(self.plan.max_seeds) if s not in ran][: look - len(ran)]
            if missing:
                need[side] = missing
        return need

    def run_round(self, need: dict[Side, list[int]], jobs: int) -> None:
        """One sweep per group of rows that need the same seeds and impl, through the runner."""
        groups: dict[tuple[tuple[int, ...], str], list[str]] = {}
        for (label, impl), missing in need.items():
            method = next(row.method for row in self.rows if row.label == label)
            groups.setdefault((tuple(missing), impl or "ours"), []).append(method)
        parallel = ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={jobs}", "trainer.num_threads=1"]
        for (seeds, impl), rows in groups.items():
            command = [sys.executable, "-m", "lora_lab.run", "-m", f"experiment={self.experiment}"]
            command += [*self.overrides, f"seed={','.join(map(str, seeds))}", f"method={','.join(rows)}"]
            command += [f"impl={impl}", *(parallel if jobs > 1 else [])]
            print("[lora-lab study] " + " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True)


def cost_of(need: dict[Side, list[int]], cost: dict[Side, float], jobs: int) -> float | None:
    """Seconds a round takes: its runs' measured costs, shared among `jobs` parallel jobs; None when a row has
    no record to measure by yet."""
    if any(side not in cost for side in need):
        return None
    per_run = [cost[side] for side, missing in need.items() for _ in missing]
    return sum(per_run) / max(1, min(jobs, len(per_run)))


def _name(side: Side) -> str:
    return side[0] + (f" ({side[1]})" if side[1] else "")


def report(study: Study, seeds: dict, found: pd.DataFrame | None, spent: float, budget: float) -> str:
    decided = 0 if found is None else int(found["verdict"].isin(["holds", "contradicted"]).sum())
    have = ", ".join(f"{_name(side)}: {len(s)}" for side, s in sorted(seeds.items(), key=str)) or "none yet"
    return (
        f"[lora-lab study] claims decided {decided} of {len(study.planned())}; seeds per row: {have}; "
        f"{spent / 3600:.2f} h spent, {(budget - spent) / 3600:.2f} h left"
    )


def dry_run(study: Study, budget: float, jobs: int) -> None:
    """The rounds the budget pays for if every open claim stayed open (the most a study can cost), and which
    claims' last looks lie within it."""
    seeds, cost, found = study.state()
    spent, reach = 0.0, "every open claim's last look"
    print(report(study, seeds, found, 0.0, budget))
    while need := study.next_round(seeds, found):
        seconds = cost_of(need, cost, jobs)
        runs = sum(len(m) for m in need.values())
        when = "cost unknown: no run of a row has landed (python -m lora_lab.cost estimates it)"
        if seconds is not None:
            when = f"{seconds / 3600:.2f} h"
        print(f"  round: {runs} runs ({', '.join(f'{_name(r)} seeds {s}' for r, s in need.items())}): {when}")
        if seconds is None or spent + seconds > budget:
            reach = "only the looks above" if seconds is not None else "unknown until a run lands"
            break
        spent += seconds
        seeds = {side: seeds.get(side, set()) | set(need.get(side, ())) for side in {*seeds, *need}}
    print(f"[lora-lab study] dry run: {spent / 3600:.2f} h of {budget / 3600:.2f} h reaches {reach}")


def main(argv: list[str] | None = None) -> None:
    parser = config.ArgumentParser(prog="python -m lora_lab.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="a conf/experiment name whose results folder a plan governs")
    parser.add_argument("overrides", nargs="*", help="runner overrides for every run (e.g. results_dir=...)")
    parser.add_argument("--budget", required=True, help="compute to spend: 3h, 90m, 1.5h")
    parser.add_argument("--jobs", type=int, default=2, help="single-threaded jobs side by side (default 2)")
    parser.add_argument("--plan", help="the plan file (default: the experiments/ plan governing the folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the rounds and hours, run nothing")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: use a whole number >= 1")
    try:
        budget = hours(args.budget)
        study = Study.of(args.experiment, args.overrides, args.plan)
    except USER_ERRORS as err:
        config.fail(err)
    if args.dry_run:
        return dry_run(study, budget, args.jobs)
    spent, started = 0.0, time.time()
    while True:
        seeds, cost, found = study.state()
        print(report(study, seeds, found, spent, budget), flush=True)
        need = study.next_round(seeds, found)
        if not need:
            print("[lora-lab study] no claim is open: each is decided or at the plan's maximum")
            return
        seconds = cost_of(need, cost, args.jobs)
        if seconds is not None and spent + seconds > budget:
            print(
                f"[lora-lab study] the next round needs {seconds / 3600:.2f} h; the budget has "
                f"{(budget - spent) / 3600:.2f} h left: stopping"
            )
            return
        study.run_round(need, args.jobs)
        spent = time.time() - started


if __name__ == "__main__":
    main()
