"""Run identity: a run's name and its configuration's id, hashed from what shapes its result.

A run's name comes from what it computes (its resolved config minus the settings that do not change the
result), so rerunning a sweep finds the runs already complete and skips them. Committed records must keep
their names: tests/test_store.py recomputes them from each study's sweeps.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lora_lab import methods

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


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def identity_of(config: dict, kind: str, with_seed: bool = True) -> dict:
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
    return digest(identity_of(resolved(cfg), cfg.method.kind, with_seed=False))


def run_name(cfg: DictConfig) -> str:
    """e.g. qv_r8-ours-seed0-1a2b3c4d: readable prefix, hash of everything that shapes the result."""
    method = methods.of(cfg)
    impl = method.impl(cfg) or "none"
    return f"{method.row(cfg)}-{impl}-seed{cfg.seed}-{digest(identity_of(resolved(cfg), cfg.method.kind))}"
