"""Run records as a pandas frame, one row per run, from the local run store or from wandb."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from lora_lab.assets import unreachable

FIELDS = (
    "name",
    "experiment",
    "label",
    "method",
    "targets",
    "impl",
    "rank",
    "seed",
    "model",
    "trainable_params",
    "trainable_pct",
    "accuracy",
    "macro_f1",
    "train_examples",
    "eval_examples",
    "train_wall_s",
    "train_examples_per_s",
    "precision",
    "status",
)
NO_IMPL = "—"  # head-only and full fine-tuning have no LoRA implementation


def load_runs(folder: str | Path) -> pd.DataFrame:
    """Every record under `folder`/runs (or `folder` itself when it holds the JSON files)."""
    folder = Path(folder)
    runs = folder / "runs" if (folder / "runs").is_dir() else folder
    paths = sorted(runs.glob("*.json"))
    if not paths:
        raise FileNotFoundError(
            f"no run records in {runs}; run e.g. `python -m lora_lab.run -m experiment=imdb_cpu` first"
        )
    return frame([read_record(p) for p in paths], str(runs))


def read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a valid run record ({err}); delete it, or rerun that run with force=true"
        ) from None


def load_wandb_runs(entity: str, project: str) -> pd.DataFrame:
    """The same fields from wandb's public API (run.py puts them in each run's summary)."""
    import wandb

    where = f"wandb {entity}/{project}"
    why = unreachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    if why:
        raise ValueError(
            f"{where}: the wandb server is unreachable ({why}); analyse the local run store instead"
        )
    if not wandb.login(prompt=False, verify=False):
        raise ValueError(f"{where}: not logged in to wandb; run `wandb login` or set WANDB_API_KEY")
    try:
        runs = [dict(run.summary) for run in wandb.Api().runs(f"{entity}/{project}")]
    except (wandb.errors.Error, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    return frame(runs, where)


def frame(records: list[dict], where: str) -> pd.DataFrame:
    """Complete runs of one experiment on one model and data size; refuse a mixed-up folder."""
    df = pd.DataFrame([{f: r.get(f) for f in FIELDS} for r in records])
    df = df[df["status"] == "complete"].copy()
    if df.empty:
        raise ValueError(f"{where} has {len(records)} record(s) but none complete")
    df["precision"] = df["precision"].fillna("unrecorded")  # records made before trainer.precision existed
    for key in ("experiment", "model", "train_examples", "eval_examples", "precision"):
        values = sorted(df[key].dropna().astype(str).unique())
        if len(values) > 1:
            raise ValueError(
                f"{where} mixes runs with different {key} ({', '.join(values)}); analyse one at a time"
            )
    df["impl"] = df["impl"].fillna(NO_IMPL)
    return df.reset_index(drop=True)
