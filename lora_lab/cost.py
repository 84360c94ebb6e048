"""What a study costs before it runs: one run of each of its rows through the real runner, cut to a few
training steps and a few hundred scored reviews, its loading, training and scoring times scaled to the study's
sizes, times the runs (seeds, impls) its sweep holds. Loading includes tokenising the training subset, which a
study pays once (the cache serves the rest), so it reads high.

    python -m lora_lab.cost imdb_cpu              # per row: load, train, score, runs; the study's total
"""

from __future__ import annotations

import math
import sys
import tempfile

import pandas as pd

from lora_lab import config, data, identity, methods, models, recipe


def runs_of(experiment: str) -> dict[tuple[str, str], tuple[list[str], int]]:
    """(row, impl): one of its sweep jobs and how many distinct runs it holds. Jobs that compose the same run
    (head-only swept over impl=ours,peft: the second finds the first's record) count once."""
    rows: dict[tuple[str, str], tuple[list[str], set[str]]] = {}
    jobs = config.sweep_jobs([f"experiment={experiment}"])
    for job, cfg in zip(jobs, config.compose_jobs(jobs), strict=True):
        method = methods.of(cfg)
        rows.setdefault((method.row(cfg), method.impl(cfg) or "—"), (job, set()))[1].add(
            identity.run_name(cfg)
        )
    return {key: (job, len(names)) for key, (job, names) in rows.items()}


def estimate(experiment: str, steps: int = 8, eval_size: int = 256) -> pd.DataFrame:
    """Seconds per run of each row of `experiment`'s sweep (load_s, train_s, eval_s), the runs it holds and
    their total, from a sample of `steps` training steps and `eval_size` scored reviews."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for (row, impl), (job, runs) in runs_of(experiment).items():
            full = config.compose(job)
            train, evaluation = data.splits(full.data, full.seed)
            sample = [f"trainer.max_steps={steps}", f"data.eval_size={min(eval_size, len(evaluation))}"]
            sample += [
                f"results_dir={tmp}",
                "trainer.progress=false",
                "trainer.save_adapter=false",
                "force=true",
            ]
            record = recipe.run(config.compose([*job, *sample]))
            assert record is not None, "a fresh results_dir: the sample always runs"
            study_steps = math.ceil(len(train) / full.trainer.batch_size) * full.trainer.epochs
            if full.trainer.max_steps:
                study_steps = min(study_steps, full.trainer.max_steps)
            load = record["load_s"]
            train_s = record["train_wall_s"] / record["steps"] * study_steps
            eval_s = record["eval_wall_s"] / record["eval_examples"] * len(evaluation)
            out.append(
                {
                    "row": row,
                    "impl": impl,
                    "runs": runs,
                    "steps": study_steps,  # a run's optimiser steps in the study
                    "reviews": len(evaluation),  # and the reviews it scores
                    "load_s": load,
                    "train_s": train_s,
                    "eval_s": eval_s,
                    "total_s": runs * (load + train_s + eval_s),
                }
            )
    return pd.DataFrame(out)


def to_text(costs: pd.DataFrame, experiment: str) -> str:
    lines = [f"{experiment}: seconds per run (load / train / score) x runs = total", ""]
    for r in costs.itertuples(index=False):
        lines.append(
            f"  {r.row:<26} {r.impl:<5} {r.load_s:7.0f} {r.train_s:8.0f} {r.eval_s:7.0f}  x {r.runs:2d} "
            f"= {r.total_s:8.0f}"
        )
    total = costs["total_s"].sum()
    lines.append(
        f"\n  the study: {int(costs['runs'].sum())} runs, {total:,.0f} s ({total / 3600:.1f} h) on this host"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = config.ArgumentParser(prog="python -m lora_lab.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="a conf/experiment name, e.g. imdb_cpu")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per row")
    parser.add_argument("--eval-size", type=int, default=256, help="reviews scored per row")
    args = parser.parse_args(argv)
    models.quiet_libraries()
    try:
        print(to_text(estimate(args.experiment, args.steps, args.eval_size), args.experiment))
    except config.USER_ERRORS as err:  # one line, exit 2, as the runner says it
        config.fail(err)


if __name__ == "__main__":
    main(sys.argv[1:])
