"""Backbones as sequence classifiers, and which of their modules each ablation row adapts.

A model config names a Hub id (and optionally a folder under the asset root) and either loads the
pretrained weights or builds the architecture from its config alone (random init: enough for parameter
counts and tests, and needs no download).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import transformers
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from lora_lab import assets
from lora_lab.config import CONF_DIR
from lora_lab.schema import Weights


def quiet_libraries() -> None:
    """Keep our own lines readable: no weight-loading reports, progress bars or deprecation notices from
    transformers, PEFT and bitsandbytes (their errors still surface as exceptions)."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # bitsandbytes, imported by PEFT, reports at import that an optional faster CPU kernel is not installed
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def gguf_file(cfg: DictConfig, source: str) -> str | None:
    """The GGUF file to read: `cfg.gguf_file` (a file in a Hub repo or folder), else the one .gguf file of a
    local folder, else None (safetensors or other formats transformers finds itself)."""
    if cfg.get("gguf_file"):
        folder = Path(source)
        if folder.is_dir() and not (folder / cfg.gguf_file).is_file():
            there = ", ".join(f.name for f in sorted(folder.glob("*.gguf"))) or "no .gguf file"
            raise FileNotFoundError(f"model.gguf_file={cfg.gguf_file!r} is not in {folder}; it holds {there}")
        return cfg.gguf_file
    found = sorted(Path(source).glob("*.gguf")) if Path(source).is_dir() else []
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ValueError(f"{source} holds several GGUF files ({names}); choose one with model.gguf_file=NAME")
    return found[0].name if found else None


def weights_of(cfg: DictConfig) -> Weights:
    """Which weights a run loaded: where from, which file, and its sha256 when it is a local file (a GGUF's
    de-quantised weights are close to, not equal to, the original checkpoint's)."""
    source = assets.on_disk(cfg.name, cfg.get("local")) or cfg.name
    name = gguf_file(cfg, source)
    if name is None and Path(source).is_dir():
        name = next((f.name for f in sorted(Path(source).glob("*.safetensors"))), None)
    path = Path(source) / name if name else None
    digest = None
    if path is not None and path.is_file():
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
    root = assets.asset_root()
    if root is not None and Path(source).resolve().is_relative_to(root.resolve()):  # not this machine's path
        source = f"${assets.ENV_VAR}/{Path(source).resolve().relative_to(root.resolve())}"
    return {"source": source, "file": name, "sha256": digest}


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer (or `cfg.tokenizer`'s, for random-init test models), with a pad token."""
    src = cfg.tokenizer or cfg
    source = assets.resolve(src.name, src.get("local"), "the tokenizer of", _offline_hint)
    gguf = gguf_file(src, source)
    if gguf:
        _speed_up_gguf_loading()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    except OSError as err:
        raise FileNotFoundError(
            f"tokenizer for model {src.name!r}: {assets.describe_lookup(src.name, src.get('local'))}"
        ) from err
    if tokenizer.pad_token is None:  # decoder LLMs ship without one; pad with end-of-sequence
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _offline_hint() -> str:
    """The model configs whose files are under the asset root, as the fix for a missing model."""
    root = assets.asset_root()
    names = []
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        preset = OmegaConf.load(path)
        if root and preset.get("pretrained") and preset.get("local") and (root / preset.local.path).is_dir():
            names.append(f"model={path.stem}")
    if names:
        return f"use a model whose files are under ${assets.ENV_VAR} ({', '.join(names)})"
    return f"set {assets.ENV_VAR} to a folder holding models/<name>/ (e.g. ../shared, then model=minilm)"


def load_config(cfg: DictConfig, num_labels: int = 2) -> PretrainedConfig:
    """The model's config alone (no weights): its shapes, for checks that must not wait for the weights."""
    overrides = OmegaConf.to_container(cfg.config, resolve=True) if cfg.get("config") else {}
    on_disk = assets.on_disk(cfg.name, cfg.get("local"))
    if not cfg.pretrained and on_disk is None and cfg.get("model_type"):
        # The architecture from model_type's defaults: DistilBertConfig() is distilbert-base-uncased, so the
        # reference table needs no download.
        return AutoConfig.for_model(cfg.model_type, num_labels=num_labels, **overrides)
    source = on_disk or assets.resolve(cfg.name, cfg.get("local"), "model", _offline_hint)
    gguf = gguf_file(cfg, source)
    if gguf:
        _speed_up_gguf_loading()
    try:
        return AutoConfig.from_pretrained(source, num_labels=num_labels, gguf_file=gguf, **overrides)
    except OSError as err:
        raise FileNotFoundError(
            f"model {cfg.name!r}: {assets.describe_lookup(cfg.name, cfg.get('local'))}"
        ) from err


def _speed_up_gguf_loading() -> None:
    """Two costs of transformers' GGUF loading, each paid once instead of hundreds or three times; the weights
    loaded are the same.

    - It builds gguf's tensor-name map again for every module it walks. The map depends only on the
      architecture and the layer count, so one is built per pair and shared.
    - It opens the file anew for the tokenizer, the config and the weights, and gguf's reader parses all the
      metadata each time (the tokenizer's vocabulary one entry at a time: most of a small model's load). The
      reader only reads, so the last file opened is kept, for as long as its size and mtime stay the same."""
    try:
        import gguf
    except ImportError:  # transformers says what to install when it reads the file
        return
    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        gguf.get_tensor_name_map = functools.cache(gguf.get_tensor_name_map)
    if not hasattr(gguf.GGUFReader, "cache_info"):
        gguf.GGUFReader = _kept_reader(gguf.GGUFReader)


def _kept_reader(reader: type) -> Callable:
    """`reader(path)` for read-only opens, keeping the last file's reader (see _speed_up_gguf_loading)."""

    @functools.lru_cache(maxsize=1)
    def opened(path: str, size: int, mtime_ns: int) -> object:
        return reader(path)

    @functools.wraps(reader)
    def open_(path: str | os.PathLike, mode: str = "r") -> object:
        if mode != "r":
            return reader(path, mode)
        stat = os.stat(path)
        return opened(os.fspath(path), stat.st_size, stat.st_mtime_ns)

    open_.cache_info = opened.cache_info  # type: ignore[attr-defined]
    return open_


def load_model(cfg: DictConfig, num_labels: int = 2, pad_token_id: int | None = None) -> nn.Module:
    """A sequence classifier: pretrained weights when `cfg.pretrained`, else random init from the config."""
    config = load_config(cfg, num_labels)
    if cfg.pretrained:  # load_config found the files (or raised), so the weights are beside the config
        source = assets.on_disk(cfg.name, cfg.get("local")) or cfg.name
        gguf = gguf_file(cfg, source)
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config, gguf_file=gguf)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id  # decoders pool on the last non-pad token
    return model
