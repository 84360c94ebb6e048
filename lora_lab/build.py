"""The one model build that the runner, the bench and the parameter counts share: the backbone, checked
against the data it will read, then the cheap dropout masks, the 4-bit base and the method, in that order."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from lora_lab import dropout, lora, methods, models, quant
from lora_lab.checks import check_shapes
from lora_lab.hardware import DTYPES


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
