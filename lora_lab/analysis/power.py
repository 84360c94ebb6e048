"""What a plan's looks cost in power against one look at max_seeds, and what they save in seeds, simulated
(Plan.power) per effect size, into plan_power.md in the results folder the plan governs.

    python -m lora_lab.analysis.power experiments/imdb_rank_target/plan_full.yaml --claims 10
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from lora_lab.analysis.plan import Plan, parse
from lora_lab.atomic import write_text_atomic
from lora_lab.config import EXPERIMENTS_DIR, ArgumentParser


def power_report(plan: Plan, claims: int, effects_sd: list[float], sims: int) -> str:
    """The plan's power against one look at max_seeds, per effect size, for a claim judged at alpha / claims:
    what the looks cost, and the seeds they save."""
    a = plan.alpha / claims
    lines = [
        f"# The power cost of {plan.file}'s looks {list(plan.looks)}",
        "",
        f"A one-sided claim at {plan.alpha} / {claims} claims = {a:.4g} (Bonferroni), its per-seed paired "
        f"differences normal with the effect in seed standard deviations; {sims:,} simulated studies per "
        "effect. The looks spend alpha by the plan's function and stop at the first that decides; one look "
        f"reads all {plan.max_seeds} seeds at the full level.",
        "",
        "| effect (seed sd) | power, its looks | power, one look | cost (pp of power) | mean seeds (looks) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for effect in effects_sd:
        p = plan.power(a, effect, sims)
        cost = 100 * (p["one_look"] - p["looks"])
        lines.append(
            f"| {effect:g} | {p['looks']:.3f} | {p['one_look']:.3f} | {cost:.1f} | {p['mean_seeds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m lora_lab.analysis.power",
        description="A plan's power cost: its looks against one look at max_seeds, written to plan_power.md "
        "in the results folder it governs.",
    )
    parser.add_argument("plan", help="a plan file, e.g. experiments/imdb_rank_target/plan_full.yaml")
    parser.add_argument("--claims", type=int, required=True, help="the claims judged together (Bonferroni)")
    parser.add_argument("--effects", default="1,1.5,2,3,4", help="effects in seed sds, comma-separated")
    parser.add_argument("--sims", type=int, default=20_000)
    args = parser.parse_args(argv)
    path = Path(args.plan)
    if not path.is_file():
        parser.error(f"{args.plan}: no such plan file")
    spec = OmegaConf.to_container(OmegaConf.load(path))
    try:
        plan = parse(spec, path)
        effects = [float(e) for e in args.effects.split(",")]
    except ValueError as err:
        parser.error(str(err))
    if args.claims < 1 or args.sims < 100:
        parser.error("--claims must be >= 1 and --sims >= 100")
    report = power_report(plan, args.claims, effects, args.sims)
    command = f"python -m lora_lab.analysis.power {args.plan} --claims {args.claims} --effects {args.effects}"
    report += f"\nMade by `{command} --sims {args.sims}`.\n"
    out = EXPERIMENTS_DIR.parent / str(spec["results"]) / "plan_power.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, report)
    sys.stdout.write(report + f"\nwrote {out}\n")


if __name__ == "__main__":
    main()
