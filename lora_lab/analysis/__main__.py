"""python -m lora_lab.analysis RESULTS_DIR [--reference CSV] [--source wandb --entity E --project P]

Reads the runs, prints the table, and writes table.md/.csv/.tex and acc_vs_params.png/.pdf into RESULTS_DIR.
"""

from __future__ import annotations

import argparse
import sys

from lora_lab.analysis import load_reference, load_runs, load_wandb_runs, plot, summarize, write_tables
from lora_lab.analysis.table import to_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.analysis", description=__doc__.split("\n\n")[1])
    parser.add_argument("results", help="an experiment's results folder (holding runs/); outputs go here too")
    parser.add_argument(
        "--reference", help="CSV of reference numbers (default: experiments/<study>/reference.csv)"
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
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    experiment = runs["experiment"].iloc[0]
    table = summarize(runs, load_reference(experiment, args.reference))
    print(to_markdown(table))
    written = write_tables(table, args.results)
    model = runs["model"].iloc[0].rsplit("/", 1)[-1]
    plot(
        table, args.results, title=f"{experiment}: {model}, {runs['train_examples'].iloc[0]:,} train examples"
    )
    print("wrote", ", ".join(str(p) for p in written), "and acc_vs_params.png/.pdf")


if __name__ == "__main__":
    main()
