"""The one model build that the runner, the bench and the parameter counts share: the backbone, checked
against the data it will read, then the cheap dropout masks, the 4-bit base and the method, in that order."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from lora_lab import dropout, lora, methods, models, quant
from lora_lab.config import require
from lora_lab.hardware import DTYPES


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


def build_model(cfg: DictConfig, pad_token_id: int | None = None, vocab: int | None = None) -> nn.Module:
    """The model a settled run config trains (trainer.precision and trainer.cheap_dropout resolved)."""
    model = models.load_model(cfg.model, pad_token_id=pad_token_id)
    check_shapes(model.config, cfg, vocab)
    cheap = cfg.trainer.cheap_dropout
    if cheap:
        dropout.install(model)
    if cfg.quant:
        quant.quantize_nf4(model, cfg.double_quant, DTYPES[cfg.trainer.precision])
    return lora.use_cheap_dropout(methods.prepare(model, cfg), cheap)
