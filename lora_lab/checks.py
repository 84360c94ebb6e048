"""Every setting that can be checked before anything loads, so that a bad value fails in about a second.

This module and the ones it imports (config, methods, families, lora.settings, tracking) import neither torch
nor transformers: `python -m lora_lab.run` runs these checks before it imports the training pipeline
(recipe.py). `check_shapes` takes a model's config, which a sweep reads once per model before any job starts
(transformers' config classes import torch, but not the training pipeline); the vocabulary and the data source
are checked where they load.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from lora_lab import config, methods, tracking
from lora_lab.config import is_int, is_number, require

WANDB_MODES = (None, "online", "offline", "disabled")


def check(cfg: DictConfig) -> None:
    """Every setting that can be checked without loading anything, so bad input fails in a second."""
    for key in ("seed", *(f"{s}_seed" for s in config.SEED_SOURCES)):
        value = cfg.get(key)
        ok = (value is None and key != "seed") or (is_int(value) and 0 <= value < 2**32)
        require(ok, key, value, "an integer in [0, 2**32)" + ("" if key == "seed" else ", or null for seed"))
    check_outputs(cfg.results_dir, cfg.experiment_name)
    check_logger(cfg.logger)
    for key in ("force", "double_quant"):
        require(isinstance(cfg[key], bool), key, cfg[key], "true or false")
    methods.check(cfg)
    check_trainer(cfg.trainer)
    check_data(cfg.data)


def check_outputs(results_dir: str, experiment_name: str) -> None:
    """Where the run's files will go: a writable folder, and an experiment name inside it."""
    root = Path(results_dir).expanduser()
    require(not root.exists() or root.is_dir(), "results_dir", results_dir, "a folder (this is a file)")
    existing = next((p for p in (root, *root.parents) if p.exists()), root)
    require(os.access(existing, os.W_OK), "results_dir", results_dir, "a folder this user can write to")
    name = str(experiment_name or "").strip()
    inside = name and (root / name).resolve().is_relative_to(root.resolve()) and name.strip("/.")
    require(bool(inside), "experiment_name", experiment_name, "a folder name inside results_dir (no '..')")


def check_logger(logger: DictConfig) -> None:
    """The wandb settings, before anything loads: a run that cannot log as asked stops in one line."""
    require(isinstance(logger.wandb, bool), "logger.wandb", logger.wandb, "true or false")
    if not logger.wandb:
        return
    require("mode" in logger, "logger.wandb", True, "logger=wandb, which brings wandb's settings with it")
    require(logger.mode in WANDB_MODES, "logger.mode", logger.mode, "online, offline, disabled or null")
    if logger.mode == "online" and not tracking.wandb_logged_in():
        raise ValueError(
            "logger.mode=online needs a wandb login: run `wandb login` (or set WANDB_API_KEY), or leave "
            "logger.mode null to log offline and `wandb sync` later"
        )


def check_trainer(cfg: DictConfig) -> None:
    """Reject trainer settings that would train nothing or crash later, naming the setting and the fix
    (precision and cheap_dropout are checked where they are resolved: pick_precision, pick_cheap_dropout)."""
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        require(is_int(cfg[key]) and cfg[key] >= 1, f"trainer.{key}", cfg[key], "a whole number >= 1")
    for key in ("max_steps", "num_threads"):
        ok = cfg[key] is None or (is_int(cfg[key]) and cfg[key] >= 1)
        require(ok, f"trainer.{key}", cfg[key], "a whole number >= 1, or null for no limit")
    ratio = cfg.warmup_ratio
    require(is_number(ratio) and 0 <= ratio < 1, "trainer.warmup_ratio", ratio, "a fraction in [0, 1)")
    decay = cfg.weight_decay
    require(is_number(decay) and decay >= 0, "trainer.weight_decay", decay, "a number >= 0")
    clip = cfg.grad_clip
    ok = clip is None or (is_number(clip) and clip > 0)
    require(ok, "trainer.grad_clip", clip, "a max gradient norm > 0, or null for no clipping")
    for key in ("merge_eval", "save_adapter", "progress", "gradient_checkpointing"):
        require(isinstance(cfg[key], bool), f"trainer.{key}", cfg[key], "true or false")
    require(cfg.tf32 in (None, True, False), "trainer.tf32", cfg.tf32, "true, false or null")
    device = str(cfg.device)
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(ok, "trainer.device", cfg.device, "auto, cpu, cuda or cuda:N")


def check_data(cfg: DictConfig) -> None:
    """Reject sizes that cannot work before anything is read (subset() checks them against the data)."""
    for key in ("train_size", "eval_size"):
        ok = cfg[key] is None or (is_int(cfg[key]) and cfg[key] >= 1)
        require(ok, f"data.{key}", cfg[key], "a whole number of examples >= 1, or null for the whole split")
    require(is_int(cfg.max_length) and cfg.max_length >= 2, "data.max_length", cfg.max_length, "tokens >= 2")
    require(is_int(cfg.eval_seed) and cfg.eval_seed >= 0, "data.eval_seed", cfg.eval_seed, "an integer >= 0")
    split = cfg.get("eval_split")
    require(split in (None, "dev"), "data.eval_split", split, "null (the test split) or dev")
    require(
        split is None or cfg.eval_size is not None,
        "data.eval_size",
        cfg.eval_size,
        "a number of reviews to hold out of the train split with data.eval_split=dev",
    )


def positions_of(shape: object) -> int:
    """How many positions a model's config allows (0: no limit it states); GPT-2 calls them n_positions."""
    return int(getattr(shape, "max_position_embeddings", None) or getattr(shape, "n_positions", None) or 0)


def check_shapes(shape: object, cfg: DictConfig, vocab: int | None = None) -> None:
    """What a model's config must allow of the data: `data.max_length` positions, and the tokenizer's `vocab`
    ids. Works from the config alone, so a sweep checks it for every job before its first one trains."""
    positions = positions_of(shape)
    ok = not positions or cfg.data.max_length <= positions
    require(ok, "data.max_length", cfg.data.max_length, f"at most the model's {positions} positions")
    size = getattr(shape, "vocab_size", None)
    ok = vocab is None or size is None or vocab <= size
    require(ok, "model.config.vocab_size", size, f"at least the tokenizer's {vocab} tokens, or unset")
