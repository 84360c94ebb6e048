"""Run records as a pandas frame, one row per run, from the local run store or from wandb, and the
per-example correctness of each configuration read from the predictions beside the records."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lora_lab import methods, store
from lora_lab.assets import unreachable
from lora_lab.store import Record, identity

# Record fields that go into the frame: the scalars (the config, curve and versions stay in the files).
COLUMNS = [
    f.name for f in dataclasses.fields(Record) if f.name not in ("config", "train_loss_curve", "versions")
]
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
    return frame([read_record(p) for p in paths], str(runs), runs)


def read_record(path: Path) -> Record:
    try:
        return Record.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} is not a valid run record ({err}); delete it, or rerun that run with force=true"
        ) from None


def load_wandb_runs(entity: str, project: str) -> pd.DataFrame:
    """The same fields from wandb's public API (run.py puts them in each run's summary, the config in its
    config). wandb holds no per-example predictions, so rows get no CIs from examples and no findings."""
    import wandb

    where = f"wandb {entity}/{project}"
    why = unreachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    if why:
        raise ValueError(
            f"{where}: the wandb server is unreachable ({why}); analyse the run store folder instead"
        )
    if not wandb.login(prompt=False, verify=False):
        raise ValueError(f"{where}: not logged in to wandb; run `wandb login` or set WANDB_API_KEY")
    fields = {f.name for f in dataclasses.fields(Record)}
    try:
        records = [
            Record(**{k: v for k, v in dict(run.summary).items() if k in fields}, config=dict(run.config))
            for run in wandb.Api().runs(f"{entity}/{project}")
        ]
    except (wandb.errors.Error, ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None
    return frame(records, where)


def frame(records: list[Record], where: str, folder: Path | None = None) -> pd.DataFrame:
    """Complete runs of one experiment on one model, with their configuration id and a `configuration`
    name: the row label, plus the settings that tell apart configurations that share it."""
    complete = [r for r in records if r.status == "complete"]
    if not complete:
        raise ValueError(f"{where} has {len(records)} record(s) but none complete")
    df = pd.DataFrame([{c: getattr(r, c) for c in COLUMNS} for r in complete])
    df["config_id"] = [r.id_of_config() for r in complete]
    df["predictions_path"] = [
        str(folder / r.predictions["file"]) if folder is not None and r.predictions else None
        for r in complete
    ]
    df["row"] = [_row(r.config) for r in complete]
    df["lr"] = [r.config.get("method", {}).get("lr") for r in complete]
    df["eval_split"] = [r.config.get("data", {}).get("eval_split") or "test" for r in complete]
    df["collapsed"] = [
        r.collapsed if r.collapsed or path is None else _collapse_of(path)
        for r, path in zip(complete, df["predictions_path"], strict=True)
    ]
    for key in ("experiment", "model", "eval_split"):
        values = sorted(df[key].dropna().astype(str).unique())
        if len(values) > 1:
            raise ValueError(
                f"{where} mixes runs of different {key}s ({', '.join(values)}); analyse one at a time"
            )
    df["impl"] = df["impl"].fillna(NO_IMPL)
    settings = {r.id_of_config(): _flat(identity(r.config, r.method, with_seed=False)) for r in complete}
    df["configuration"] = _names(df, settings)
    return df.reset_index(drop=True)


def _row(config: dict) -> str:
    """The conf/method row a run's config makes (its run name's first part), read from the config."""
    cfg = OmegaConf.create(config)
    return methods.of(cfg).row(cfg)


def _require_predictions(path: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} is missing: its record names it; rerun that run with force=true (or restore the file)"
        )


def _collapse_of(predictions_path: str) -> str | None:
    """store.collapse on a run's predictions: records made before the field existed get it here."""
    _require_predictions(predictions_path)
    preds = pd.read_parquet(predictions_path, columns=["pred", "label"])
    return store.collapse(preds["pred"].to_numpy(), preds["label"].to_numpy())


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _names(df: pd.DataFrame, settings: dict[str, dict]) -> list[str]:
    """The row label, and for labels held by several configurations, the settings other than impl in which
    they differ: "Q+V (r=8), lora_lr=0.0001". Rows of both impls at one setting keep one name, so that
    ours and PEFT still pair."""
    names = dict.fromkeys(df["config_id"], "")
    for label, group in df.groupby("label", sort=False):
        ids = list(dict.fromkeys(group["config_id"]))
        keys = sorted({k for i in ids for k in settings[i]} - {"impl"})
        differing = [k for k in keys if len({json.dumps(settings[i].get(k)) for i in ids}) > 1]
        for i in ids:
            extra = ", ".join(f"{k}={settings[i].get(k)}" for k in differing)
            names[i] = f"{label}, {extra}" if extra else label
    return [names[i] for i in df["config_id"]]


def correctness(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """For each configuration whose runs all kept predictions: a frame of 0/1 correctness, one row per
    test example (by example_id), one column per seed. Each file is checked against its record's sha256."""
    out = {}
    for config_id, group in runs.groupby("config_id", sort=False):
        if group["predictions_path"].isna().any():
            continue
        columns = {}
        for seed, path, digest in zip(
            group["seed"], group["predictions_path"], group["predictions"], strict=True
        ):
            _require_predictions(path)
            if hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest["sha256"]:
                raise ValueError(
                    f"{path} does not match the sha256 its record holds; rerun that run with force=true"
                )
            preds = pd.read_parquet(path)
            columns[seed] = pd.Series(
                (preds["pred"] == preds["label"]).astype(int).to_numpy(), preds["example_id"]
            )
        out[config_id] = pd.DataFrame(columns).sort_index()
    return out
