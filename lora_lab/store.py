"""The run store: one JSON record per run under results/<experiment>/runs/ (schema.Record, named by
identity.run_name), its per-example predictions beside it, and whether those say the run collapsed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import special

from lora_lab.atomic import write_atomic, write_text_atomic
from lora_lab.schema import PredictionsFile, Record


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / cfg.experiment_name / "runs"


def finished(path: Path, inputs: dict) -> bool:
    """Whether the record at `path` is a complete run on these `inputs` (data and weights fingerprints) with
    its predictions in place. A complete record made on other inputs is an error naming both: its name says
    the same settings, so only a rerun (force=true) or another experiment_name may replace it. Records made
    before a fingerprint existed are taken as they are for that part."""
    record = read(path)
    if not record or record.get("status") != "complete":
        return False
    preds = record.get("predictions")
    if preds and not (path.parent / preds["file"]).is_file():
        print(f"[lora-lab] {path.stem}: its predictions file {preds['file']} is missing; running it again")
        return False
    changed = changed_inputs(record, inputs)
    if changed:
        key, (theirs, ours) = next(iter(changed.items()))
        raise ValueError(
            f"{path} finished on other {key} ({_short(theirs)}) than this run would read ({_short(ours)}); "
            f"point the run at the {key} it ran on, rerun it with force=true, or give this one another "
            "experiment_name"
        )
    return True


def changed_inputs(record: dict, inputs: dict) -> dict[str, tuple[object, object]]:
    """{"data" or "weights": (the record's fingerprint, the one `inputs` has)} where they differ. A record
    made before a fingerprint existed matches on that part."""
    theirs = {"data": record.get("data"), "weights": (record.get("weights") or {}).get("sha256")}
    ours = {"data": inputs["data"], "weights": (inputs["weights"] or {}).get("sha256")}
    return {k: (theirs[k], ours[k]) for k in theirs if theirs[k] is not None and theirs[k] != ours[k]}


def _short(fingerprint: object) -> str:
    """A fingerprint as one short phrase: sha256 prefixes and sizes."""
    if isinstance(fingerprint, dict):
        return ", ".join(
            f"{k}: {v['examples']} examples, sha256 {v['sha256'][:12]}" for k, v in fingerprint.items()
        )
    return f"sha256 {str(fingerprint)[:12]}"


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write(path: Path, record: Record) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: v for k, v in dataclasses.asdict(record).items() if v is not None}
    return write_text_atomic(path, json.dumps(fields, indent=2, sort_keys=True) + "\n")


PREDICTIONS_SUFFIX = ".preds.parquet"
ONE_CLASS_SHARE = 0.95  # predicting one label this often is "nearly one class"
CHANCE_P = 0.01  # accuracy not above the majority label's share at this level is "at chance"


def collapse(pred: np.ndarray, label: np.ndarray) -> str | None:
    """Why a run's predictions say it did not learn: (nearly) one predicted class, or accuracy no better than
    always answering the commoner label (one-sided binomial test); None when neither. Such a run is kept and
    flagged, never dropped: how often a method collapses is a finding of its own."""
    pred, label = np.asarray(pred), np.asarray(label)
    top_share = max(np.mean(pred == c) for c in (0, 1))
    if top_share >= ONE_CLASS_SHARE:
        return f"predicts one class for {100 * top_share:.1f}% of examples"
    chance = max(np.mean(label == c) for c in (0, 1))
    correct = int((pred == label).sum())
    # P(X >= correct) for X ~ Binomial(n, chance): the one-sided binomial test's p-value, from scipy.special
    # because every run imports this module and scipy.stats takes several times as long to import
    if special.bdtrc(correct - 1, len(label), chance) >= CHANCE_P:
        return f"accuracy {100 * correct / len(label):.1f}% is at chance ({100 * chance:.1f}%)"
    return None


def write_predictions(record_path: Path, predictions: pd.DataFrame) -> PredictionsFile:
    """Write a run's per-example predictions beside its record (atomically); what the record says of them."""
    path = record_path.with_name(record_path.stem + PREDICTIONS_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: predictions.to_parquet(tmp, index=False))
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
