"""python -m lora_lab.analysis RESULTS_DIR [--reference CSV] [--claims YAML] [--latency BENCH_JSON] ...

Reads the runs, prints the table and the study's findings, and writes table.md/.csv/.tex,
acc_vs_params.png/.pdf, with --latency acc_vs_latency.png/.pdf, and (when the study has claims)
findings.md/.csv and findings.png into RESULTS_DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_lab.analysis import findings as findings_module
from lora_lab.analysis import load_reference, load_runs, load_wandb_runs, plot, rates, summarize, write_tables
from lora_lab.analysis.plot import plot_findings
from lora_lab.analysis.runs import correctness
from lora_lab.analysis.table import add_latency, to_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.analysis", description=__doc__.split("\n\n")[1])
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
    parser.add_argument("--source", choices=("store", "wandb"), default="store")
    parser.add_argument("--entity", help="wandb entity (with --source wandb)")
    parser.add_argument("--project", help="wandb project (with --source wandb)")
    args = parser.parse_args(argv)
    if args.source == "wandb" and not (args.entity and args.project):
        parser.error("--source wandb needs --entity and --project")
    try:
        runs = (
            load_runs(args.results) if args.source == "store" else load_wandb_runs(args.entity, args.project)
        )
        experiment = runs["experiment"].iloc[0]
        correct = correctness(runs)
        table = summarize(runs, correct, load_reference(experiment, args.reference))
        latency = (
            add_latency(table, runs, json.loads(Path(args.latency).read_text())) if args.latency else None
        )
        tuning = runs["eval_split"].iloc[0] == "dev"  # a learning-rate pilot: rates, no verdicts
        skip = args.claims == "none" or tuning
        claims = None if skip else findings_module.load_claims(experiment, args.claims)
        findings = findings_module.check(claims, table, correct) if claims and correct else None
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)  # bad input, as the runner says it
    print(to_markdown(table))
    written = write_tables(table, args.results)
    model = runs["model"].iloc[0].rsplit("/", 1)[-1]
    title = f"{experiment}: {model}, {runs['train_examples'].iloc[0]:,} train examples"
    plot(table, args.results, title=title)
    written += [f"{args.results}/acc_vs_params.png/.pdf"]
    if latency is not None:
        plot(latency, args.results, title=f"{title}\nlatency: {Path(args.latency).name}", x="latency_x_base")
        written += [f"{args.results}/acc_vs_latency.png/.pdf"]
    if tuning:
        chosen = rates.choose(table)
        print(rates.to_markdown(chosen))
        written.append(rates.write_rates(chosen, args.results))
    if findings is not None:
        print(findings_module.to_markdown(findings, table))
        written += findings_module.write_findings(findings, table, args.results)
        plot_findings(
            findings, args.results, title=f"{experiment}: claims, a - b with the interval that decides"
        )
        written += [f"{args.results}/findings.png"]
    print("wrote", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
