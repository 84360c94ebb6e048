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
from lora_lab.identity import digest, identity_of
from lora_lab.schema import Record

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
    records = [read_record(p) for p in paths]
    df = frame(records, str(runs), runs)
    df.attrs["read"] = read_digest(paths)
    return df


def read_record(path: Path) -> Record:
    """A record, refused when it is not one, or when its config no longer hashes to its name and config_id
    (edited by hand: it would be relabelled and pooled into another row). Records written before config_id
    existed were named under older identity rules and are taken as they are."""
    try:
        record = Record.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} is not a valid run record ({err}); delete it, or rerun that run with force=true"
        ) from None
    if record.config_id is not None:
        named = record.name.endswith("-" + digest(identity_of(record.config, record.method)))
        if not named or record.config_id != digest(
            identity_of(record.config, record.method, with_seed=False)
        ):
            raise ValueError(
                f"{path}: its config does not hash to its name and config_id (was it edited?); restore the "
                "file, or rerun that run with force=true"
            )
    return record


def read_digest(paths: list[Path]) -> str:
    """What an analysis read, for its outputs to name: the count of records and a sha256 of their files."""
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{len(paths)} records, sha256 {sha.hexdigest()[:12]}"


def load_wandb_runs(entity: str, project: str) -> pd.DataFrame:
    """The same fields from wandb's public API (recipe.py puts them in each run's summary, the config in its
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
    name: the row label, plus the settings that tell apart configurations that share it. Runs that did not
    complete are kept in `.attrs["failed"]` (label, impl, seed, reason), to be counted and shown."""
    complete = [r for r in records if r.status == "complete"]
    if not complete:
        raise ValueError(f"{where} has {len(records)} record(s) but none complete")
    _same_inputs(complete, where)
    df = pd.DataFrame([{c: getattr(r, c) for c in COLUMNS} for r in complete])
    df["config_id"] = [r.id_of_config() for r in complete]
    df["predictions_path"] = [
        str(folder / r.predictions["file"]) if folder is not None and r.predictions else None
        for r in complete
    ]
    df["row"] = [_row(r.config) for r in complete]
    df["finished_at"] = [r.finished_at for r in complete]  # a plan committed after the first is no plan
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
    settings = {r.id_of_config(): _flat(identity_of(r.config, r.method, with_seed=False)) for r in complete}
    df["configuration"] = _names(df, settings)
    df = df.reset_index(drop=True)
    df.attrs["failed"] = [
        {"label": r.label, "impl": r.impl or NO_IMPL, "seed": r.seed, "reason": r.reason or r.status}
        for r in records
        if r.status != "complete"
    ]
    return df


def _same_inputs(records: list[Record], where: str) -> None:
    """Runs pooled or paired must have read the same things: one evaluation set for the whole study (every
    run is scored on the same reviews), one set of pretrained weights, and at one seed and data setting one
    training set. Records made before the fingerprints existed carry none and are not compared."""
    checks = {  # what: record -> (the group it must agree within, its fingerprint)
        "evaluation data": lambda r: (None, (r.data or {}).get("eval", {}).get("sha256")),
        "pretrained weights": lambda r: (None, (r.weights or {}).get("sha256")),
        "training data": lambda r: (
            (r.seed, json.dumps(r.config.get("data"), sort_keys=True)),
            (r.data or {}).get("train", {}).get("sha256"),
        ),
    }
    for what, key in checks.items():
        groups: dict = {}
        for r in records:
            group, value = key(r)
            if value:
                groups.setdefault(group, {}).setdefault(value, []).append(r.name)
        for values in groups.values():
            if len(values) > 1:
                odd = [name for names in sorted(values.values(), key=len)[:-1] for name in names]
                shown = ", ".join(odd[:4]) + (f" and {len(odd) - 4} more" if len(odd) > 4 else "")
                raise ValueError(
                    f"{where}: {shown} read other {what} than the rest (their fingerprints differ), so they "
                    "cannot be pooled or paired; move them to their own experiment folder, or rerun them"
                )


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


def _same_accuracy(preds: pd.DataFrame, accuracy: float, path: str) -> None:
    """A record's accuracy must be what its predictions score, or the table would mix two numbers (to within
    half an example: the loop computes it in its own precision)."""
    scored = float((preds["pred"] == preds["label"]).mean())
    if abs(scored - accuracy) * len(preds) >= 0.5:
        raise ValueError(
            f"{path} scores {scored:.4f} but its record says accuracy {accuracy:.4f}; restore the record, or "
            "rerun that run with force=true"
        )


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
        for seed, path, stored in zip(
            group["seed"], group["predictions_path"], group["predictions"], strict=True
        ):
            _require_predictions(path)
            if hashlib.sha256(Path(path).read_bytes()).hexdigest() != stored["sha256"]:
                raise ValueError(
                    f"{path} does not match the sha256 its record holds; rerun that run with force=true"
                )
            preds = pd.read_parquet(path)
            _same_accuracy(preds, group.loc[group["seed"] == seed, "accuracy"].iloc[0], path)
            columns[seed] = pd.Series(
                (preds["pred"] == preds["label"]).astype(int).to_numpy(), preds["example_id"]
            )
        out[config_id] = pd.DataFrame(columns).sort_index()
    return out
