"""The run store: one JSON record per run under results/<experiment>/runs/, plus optional wandb logging.

A run's name comes from what it computes (its resolved config minus settings that do not change the
result), so rerunning a sweep finds the runs already complete and skips them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lora_lab.atomic import write_atomic, write_text_atomic

# Settings that change how a run is shown or stored, or where its files are found, not what it computes.
# The device is among them: CPU and CUDA compute the same thing up to rounding (the record says which ran);
# precision and cheap_dropout are not, and run.py resolves their `auto` per device before hashing.
NOT_IDENTITY = (
    "force",
    "logger",
    "results_dir",
    "trainer.progress",
    "trainer.save_adapter",
    "trainer.num_threads",
    "trainer.device",
    "data.cache_dir",
    "data.local",
    "model.local",
    "model.tokenizer.local",
)
LORA_ONLY = ("impl", "rank", "alpha", "dropout", "use_rslora", "lora_lr")  # ignored by head-only and full
LIBRARIES = ("torch", "transformers", "peft", "datasets", "hydra-core")


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def identity(cfg: DictConfig, with_seed: bool = True) -> dict:
    """What shapes a run's result: the resolved config without NOT_IDENTITY, without LoRA settings on rows
    that have no LoRA, and without settings left null (so that a new option whose default is null leaves
    every earlier run's identity as it was)."""
    ignored = (
        NOT_IDENTITY + (LORA_ONLY if cfg.method.kind != "lora" else ()) + (() if with_seed else ("seed",))
    )
    ident = resolved(cfg)
    for dotted in ignored:
        *parents, key = dotted.split(".")
        node = ident
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return _without_nulls(ident)


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


def config_id(cfg: DictConfig) -> str:
    """The configuration a run belongs to: its identity without the seed. Seeds of one configuration share it;
    the analysis aggregates over it."""
    return digest(identity(cfg, with_seed=False))


def run_name(cfg: DictConfig) -> str:
    """e.g. qv_r8-ours-seed0-1a2b3c4d: readable prefix, hash of everything that shapes the result."""
    kind = cfg.method.kind
    row = (
        kind
        if kind != "lora"
        else f"{cfg.method.targets if isinstance(cfg.method.targets, str) else 'custom'}_r{cfg.rank}"
    )
    impl = cfg.impl if kind == "lora" else "none"
    return f"{row}-{impl}-seed{cfg.seed}-{digest(identity(cfg))}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / cfg.experiment_name / "runs"


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


PREDICTIONS_SUFFIX = ".preds.parquet"


def write_predictions(record_path: Path, predictions: pd.DataFrame) -> dict:
    """Write a run's per-example predictions beside its record (atomically); what the record says of them."""
    path = record_path.with_name(record_path.stem + PREDICTIONS_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: predictions.to_parquet(tmp, index=False))
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@cache
def provenance() -> dict:
    """Library versions, git commit and machine, so a number can be traced to the code that made it.

    Read once per process (run.py asks at start-up): a sweep runs the code it imported, even if the
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
        "versions": {lib: version(lib) for lib in LIBRARIES},
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {_cpu_bf16()} bf16",
    }


def _cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively: it decides precision=auto and the speed of a run."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "native" if native else "no native"


@contextmanager
def wandb_run(cfg: DictConfig, name: str) -> Iterator[object | None]:
    """A wandb run for this job when `logger.wandb`, finished on exit; offline when not logged in."""
    if not cfg.logger.wandb:
        yield None
        return
    import wandb  # imported here: slow to import, and only this path needs it

    mode = cfg.logger.mode or ("online" if wandb.login(prompt=False, verify=False) else "offline")
    folder = Path(cfg.results_dir) / cfg.experiment_name
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=name,
        config=resolved(cfg),
        dir=str(folder),
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True),
    )
    if mode == "offline":
        print(f"[lora-lab] wandb offline run: {run.dir.removesuffix('/files')} (wandb leet / wandb sync)")
    try:
        yield run
    finally:
        run.finish()
