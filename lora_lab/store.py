"""The run store: one JSON record per run under results/<experiment>/runs/ (the `Record` schema), its
per-example predictions beside it, plus optional wandb logging.

A run's name comes from what it computes (its resolved config minus settings that do not change the
result), so rerunning a sweep finds the runs already complete and skips them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from lora_lab import methods
from lora_lab.atomic import write_atomic, write_text_atomic

# Settings that change how a run is shown or stored, or where its files are found, not what it computes.
# The device is among them: CPU and CUDA compute the same thing up to rounding (the record says which ran);
# precision and cheap_dropout are not, and recipe.settle resolves their `auto` per device before hashing.
NOT_IDENTITY = (
    "force",
    "logger",
    "results_dir",
    "trainer.progress",
    "trainer.save_adapter",
    "trainer.merge_eval",  # the same function up to rounding, like the device
    "trainer.num_threads",
    "trainer.device",
    "data.cache_dir",
    "data.local",
    "model.local",
    "model.tokenizer.local",
    # aliases: each reaches the identity as its row's method.lr, keeping the names of runs made before it
    "head_lr",
    "full_lr",
)
LIBRARIES = ("torch", "transformers", "peft", "datasets", "hydra-core", "bitsandbytes")


@dataclasses.dataclass
class Record:
    """One run, as the runner writes it and the analysis and tests read it. Fields a run did not reach (a
    failed run's metrics) stay None; records written before a field existed read as None there too."""

    name: str
    experiment: str
    label: str  # the reference table's name of the row, e.g. "Q+V (r=8)"
    method: str  # the method's kind: a key of methods.METHODS
    seed: int
    model: str
    config: dict  # the resolved config the run ran with
    status: str  # complete | failed
    config_id: str | None = None  # the identity hash without the seed: what seeds of one configuration share
    targets: str | list | None = None
    rank: int | None = None
    impl: str | None = None  # ours | peft (methods with an implementation)
    seeds: dict | None = None  # the seed of each source of randomness, resolved (config.seeds_of)
    quant: str | None = None
    weights: dict | None = None  # pretrained weights loaded: {"source", "file", "sha256"} (models.weights_of)
    data: dict | None = None  # {"train"|"eval": {"examples", "sha256"}} (data.fingerprint) of what it ran on
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_pct: float | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    reason: str | None = None  # why a run failed
    precision: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    eval_loss: float | None = None
    predictions: dict | None = None  # {"file": <name>.preds.parquet, "sha256": ...}
    collapsed: str | None = None  # why the run counts as collapsed (store.collapse); None: it learned
    train_loss_curve: list | None = None
    steps: int | None = None
    not_applicable: list | None = None  # settings the job was given that its method does not read (ignored)
    load_s: float | None = None  # reading data and weights, tokenising, preparing the method (or probe.py's)
    train_wall_s: float | None = None
    eval_wall_s: float | None = None  # scoring the evaluation set
    train_examples_per_s: float | None = None
    train_tokens_per_s: float | None = None  # the reviews' own tokens per second of training
    train_padded_tokens_per_s: float | None = None  # the tokens computed on, padding included
    peak_memory_mb: float | None = None  # training's peak, before scoring
    peak_memory_of: str | None = None  # what peak_memory_mb measures: CUDA tensors, or the process's RSS
    peak_memory_reserved_mb: float | None = None  # CUDA only: the caching allocator's peak
    gpu: dict | None = None  # train.gpu_of: name, capability, memory, CUDA and driver versions
    adapter_bytes: int | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    versions: dict | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    python: str | None = None
    machine: str | None = None

    @classmethod
    def check_fields(cls, names: Iterable[str]) -> None:
        """Names outside this schema are an error: the runner checks what it will write before it trains."""
        unknown = set(names) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown record fields {sorted(unknown)}: add them to store.Record, or update lora-lab to "
                "read a record a newer version wrote"
            )

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """A record read from JSON; unknown keys (from a newer schema) are an error, missing ones None."""
        cls.check_fields(data)
        return cls(**data)

    def id_of_config(self) -> str:
        """config_id, computed from the stored config for records written before the field existed."""
        return self.config_id or digest(identity(self.config, self.method, with_seed=False))


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def identity(config: dict, kind: str, with_seed: bool = True) -> dict:
    """What shapes a run's result: the resolved `config` without NOT_IDENTITY, without the top-level method
    settings that its method `kind` does not read (a head-only row ignores rank), and without settings left
    null (so that a new option whose default is null leaves every earlier run's identity as it was)."""
    unread = tuple(k for k in methods.every_setting() if k not in methods.METHODS[kind].settings)
    ignored = NOT_IDENTITY + unread + (() if with_seed else ("seed",))
    ident = copy.deepcopy(config)
    for dotted in ignored:
        *parents, key = dotted.split(".")
        node: object = ident
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return _without_nulls(ident)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


def config_id(cfg: DictConfig) -> str:
    """The configuration a run belongs to: its identity without the seed. Seeds of one configuration share it;
    the analysis aggregates over it."""
    return digest(identity(resolved(cfg), cfg.method.kind, with_seed=False))


def run_name(cfg: DictConfig) -> str:
    """e.g. qv_r8-ours-seed0-1a2b3c4d: readable prefix, hash of everything that shapes the result."""
    method = methods.of(cfg)
    impl = method.impl(cfg) or "none"
    return f"{method.row(cfg)}-{impl}-seed{cfg.seed}-{digest(identity(resolved(cfg), cfg.method.kind))}"


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
    theirs = {"data": record.get("data"), "weights": (record.get("weights") or {}).get("sha256")}
    ours = {"data": inputs["data"], "weights": (inputs["weights"] or {}).get("sha256")}
    for key in ("data", "weights"):
        if theirs[key] is not None and theirs[key] != ours[key]:
            raise ValueError(
                f"{path} finished on other {key} ({_short(theirs[key])}) than this run would read "
                f"({_short(ours[key])}); point the run at the {key} it ran on, rerun it with force=true, or "
                "give this one another experiment_name"
            )
    return True


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
    if stats.binomtest(correct, len(label), chance, alternative="greater").pvalue >= CHANCE_P:
        return f"accuracy {100 * correct / len(label):.1f}% is at chance ({100 * chance:.1f}%)"
    return None


def write_predictions(record_path: Path, predictions: pd.DataFrame) -> dict:
    """Write a run's per-example predictions beside its record (atomically); what the record says of them."""
    path = record_path.with_name(record_path.stem + PREDICTIONS_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: predictions.to_parquet(tmp, index=False))
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@cache
def provenance() -> dict:
    """Library versions, git commit and machine, so a number can be traced to the code that made it.

    Read once per process (run.py asks before the first job): a sweep runs the code it imported, even if the
    checkout changes while it runs."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "versions": {lib: _version(lib) for lib in LIBRARIES},
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {_cpu_bf16()} bf16",
    }


def _version(library: str) -> str | None:
    """The installed version, or None for an optional library that is not installed (bitsandbytes)."""
    try:
        return version(library)
    except PackageNotFoundError:
        return None


def _cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively: it decides precision=auto and the speed of a run."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "native" if native else "no native"
