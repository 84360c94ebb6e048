"""python -m lora_lab.analysis RESULTS_DIR [--reference CSV] [--claims YAML] [--latency BENCH_JSON] ...

Reads the runs, prints the table and the study's findings, and writes into RESULTS_DIR: table.md/.csv/.tex;
acc_vs_params.png/.pdf, acc_vs_train_time.png/.pdf and acc_vs_peak_memory.png/.pdf (measured costs, mean ± sd
over seeds, on the host kind most runs ran on); with --latency, acc_vs_latency.png/.pdf; when the study has
claims, findings.md/.csv and findings.png. When its runs vary one seed source at a time: sources.md/.csv and
sources.png in place of the plots against costs (one method: its runs would stand in one column).

Every output it owns is written or removed on each run, so none is left from an earlier analysis; the
markdown ones name the records they were made from (their count and a digest) and the runs that failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lora_lab.analysis import claims as claims_module
from lora_lab.analysis import findings as findings_module
from lora_lab.analysis import (
    load_reference,
    load_runs,
    load_wandb_runs,
    plot,
    rates,
    sources,
    summarize,
    write_tables,
)
from lora_lab.analysis.plan import Plan, load_plan
from lora_lab.analysis.plot import X_AXES, plot_findings
from lora_lab.analysis.runs import correctness
from lora_lab.analysis.table import add_latency, cost_host, read_bench, to_markdown
from lora_lab.config import ArgumentParser

OUTPUTS = (  # what an analysis of a folder writes there: each is rewritten or removed
    *("table.md", "table.csv", "table.tex", "acc_vs_params.png", "acc_vs_params.pdf"),
    *("acc_vs_latency.png", "acc_vs_latency.pdf", "rates.md", "findings.md", "findings.csv", "findings.png"),
    *("sources.md", "sources.csv", "sources.png"),
    *("acc_vs_train_time.png", "acc_vs_train_time.pdf", "acc_vs_peak_memory.png", "acc_vs_peak_memory.pdf"),
)


def arguments() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m lora_lab.analysis", description=__doc__.split("\n\n")[1])
    parser.add_argument("results", help="an experiment's results folder (holding runs/); outputs go here too")
    parser.add_argument(
        "--reference", help="CSV of reference numbers (default: experiments/<study>/reference.csv)"
    )
    parser.add_argument(
        "--claims", help="claims to check (default: experiments/<study>/claims.yaml); `none`: check none"
    )
    parser.add_argument(
        "--latency", help="a `python -m lora_lab.bench` JSON: also plot accuracy against inference latency"
    )
    parser.add_argument(
        "--master",
        help="with runs that vary one seed source at a time: runs of the same rows over the master seed, "
        "whose variance sources.md shows beside the sources' (e.g. results/imdb_rank_target/cpu_minilm)",
    )
    parser.add_argument("--source", choices=("store", "wandb"), default="store")
    parser.add_argument("--entity", help="wandb entity (with --source wandb)")
    parser.add_argument("--project", help="wandb project (with --source wandb)")
    return parser


@dataclass
class Study:
    """What the analysis read and decided, before anything is written."""

    runs: pd.DataFrame
    table: pd.DataFrame
    latency: pd.DataFrame | None  # the table joined to --latency's bench variants
    tuning: bool  # a learning-rate pilot (runs on the dev split): rates, no verdicts
    plan: Plan | None
    master: pd.DataFrame | None  # --master's runs
    findings: pd.DataFrame | None  # the claims' verdicts
    sources: pd.DataFrame  # the runs that vary one seed source alone (sources.varied); empty in most studies


def read(args: argparse.Namespace) -> Study:
    """The runs, their table and the claims' verdicts; bad input raises (FileNotFoundError, ValueError)."""
    runs = load_runs(args.results) if args.source == "store" else load_wandb_runs(args.entity, args.project)
    experiment = runs["experiment"].iloc[0]
    correct = correctness(runs)
    table = summarize(runs, correct, load_reference(experiment, args.reference))
    latency = (
        add_latency(table, runs, read_bench(args.latency), f"--latency {args.latency}")
        if args.latency
        else None
    )
    tuning = runs["eval_split"].iloc[0] == "dev"
    skip = args.claims == "none" or tuning
    claims = None if skip else claims_module.load_claims(experiment, args.claims)
    plan = load_plan(args.results) if args.source == "store" else None
    first_run = runs["finished_at"].dropna().min() if "finished_at" in runs else None
    master = load_runs(args.master) if args.master else None
    findings = findings_module.check(claims, table, correct, plan, first_run) if claims and correct else None
    return Study(runs, table, latency, tuning, plan, master, findings, sources.varied(runs))


def write(study: Study, args: argparse.Namespace) -> list[Path]:
    """Print the table (and rates or verdicts), write every output the study makes; return their paths."""
    runs, table, results = study.runs, study.table, Path(args.results)
    notes = [f"Made by `python -m lora_lab.analysis` from {runs.attrs.get('read') or args.results}."]
    notes += failed_notes(runs.attrs.get("failed", []))
    print(to_markdown(table) + "".join(f"\n{n}" for n in notes[1:]))
    written = write_tables(table, args.results, notes)
    experiment, model = runs["experiment"].iloc[0], runs["model"].iloc[0].rsplit("/", 1)[-1]
    title = f"{experiment}: {model}, {runs['train_examples'].iloc[0]:,} train examples"
    if study.sources.empty:  # a study of seed sources runs one method: against a cost, one column of runs
        plot(table, args.results, title=title)
        written += [results / f"acc_vs_params.{ext}" for ext in ("png", "pdf")]
        for cost in ("train_s", "peak_memory_mb"):  # measured costs, on the host kind most runs ran on
            if table[cost].notna().any():
                plot(table, args.results, title=f"{title}\n{cost_host(runs)}", x=cost)
                written += [results / f"{X_AXES[cost][0]}.{ext}" for ext in ("png", "pdf")]
    if study.latency is not None:
        latency_title = f"{title}\nlatency: {Path(args.latency).name}"
        plot(study.latency, args.results, title=latency_title, x="latency_x_base")
        written += [results / f"acc_vs_latency.{ext}" for ext in ("png", "pdf")]
    written += sources.write(study.sources, args.results, notes, study.master, title)
    if study.tuning:
        chosen = rates.choose(table)
        print(rates.to_markdown(chosen))
        written.append(rates.write_rates(chosen, args.results, notes))
    if study.findings is not None:
        print(findings_module.to_markdown(study.findings, table, study.plan))
        written += findings_module.write_findings(study.findings, table, args.results, notes, study.plan)
        plot_findings(
            study.findings, args.results, title=f"{experiment}: claims, a - b with the interval that decides"
        )
        written += [results / "findings.png"]
    return written


def remove_stale(results: Path, written: list[Path]) -> None:
    """Remove the outputs an earlier analysis made that this one did not, so none is left over."""
    made = {Path(p).name for p in written}
    stale = [p for p in (results / n for n in OUTPUTS if n not in made) if p.is_file()]
    for path in stale:
        path.unlink()
    if stale:
        print("removed what this analysis no longer makes:", ", ".join(p.name for p in stale))


def main(argv: list[str] | None = None) -> None:
    """The stages: read (and decide), write, remove what is stale."""
    parser = arguments()
    args = parser.parse_args(argv)
    if args.source == "wandb" and not (args.entity and args.project):
        parser.error("--source wandb needs --entity and --project")
    try:
        study = read(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)  # bad input, as the runner says it
    written = write(study, args)
    print("wrote", ", ".join(str(p) for p in written))
    remove_stale(Path(args.results), written)


def failed_notes(failed: list[dict]) -> list[str]:
    """One line per row with runs that did not complete: they are in no mean, CI or verdict."""
    rows: dict = {}
    for run in failed:
        rows.setdefault((run["label"], run["impl"]), []).append(run)
    return [
        f"Not in the table's means: {len(runs)} run(s) of {label} ({impl}) failed: "
        + "; ".join(f"seed {r['seed']}: {r['reason']}" for r in sorted(runs, key=lambda r: r["seed"]))
        for (label, impl), runs in rows.items()
    ]


if __name__ == "__main__":
    main()
