"""The fine-tuning methods behind one interface: `prepare` a model, `save` what a run keeps.

head_only trains the classification head; lora adds low-rank adapters (ours or PEFT's, by `impl`) and
trains the head in full beside them; full trains everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from lora_lab import lora
from lora_lab.config import is_number, require
from lora_lab.lora.inject import name_matches
from lora_lab.models import family_of

KINDS = ("head_only", "lora", "full")
IMPLS = ("ours", "peft")
TARGET_LABELS = {"qv": "Q+V", "attn": "All Attention", "attn_ffn": "All Attention+FFN"}


def targets_of(model: nn.Module, targets: str | Sequence[str]) -> str | list[str]:
    """A preset name (qv, attn, attn_ffn) resolved for this model's family, or explicit names / a regex."""
    if isinstance(targets, (list, tuple, ListConfig)):
        return list(targets)
    if targets in TARGET_LABELS:
        return list(family_of(model).targets[targets])
    return targets  # "all-linear" or a regex


def row_label(cfg: DictConfig) -> str:
    """The reference table's name for a configuration, e.g. "Q+V (r=8)"."""
    kind = cfg.method.kind
    if kind == "head_only":
        return "Classification Head Only"
    if kind == "full":
        return "Full Fine-Tuning"
    targets = cfg.method.targets
    name = TARGET_LABELS.get(targets, targets if isinstance(targets, str) else "+".join(targets))
    return f"{name} (r={cfg.rank})"


def check(cfg: DictConfig) -> None:
    if cfg.method.kind not in KINDS:
        raise ValueError(f"method.kind={cfg.method.kind!r} is not one of {KINDS}")
    if cfg.method.kind == "lora" and cfg.impl not in IMPLS:
        raise ValueError(f"impl={cfg.impl!r} is not one of {IMPLS}; use impl=ours or impl=peft")
    if cfg.get("quant") not in (None, "nf4"):
        raise ValueError(f"quant={cfg.quant!r} is not supported; use quant=nf4 or leave it null")
    if cfg.get("quant") and cfg.method.kind == "full":
        raise ValueError(
            "quant=nf4 freezes a 4-bit base; full fine-tuning cannot train it (use a LoRA method)"
        )
    lr = cfg.method.lr
    require(is_number(lr) and lr > 0, lr_setting(cfg), lr, "a learning rate > 0")


def lr_setting(cfg: DictConfig) -> str:
    """The setting a user changes to change this row's learning rate: LoRA rows take theirs from lora_lr."""
    return "lora_lr" if OmegaConf.is_interpolation(cfg.method, "lr") else "method.lr"


def prepare(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Set which parameters train (and add adapters) according to `cfg.method`; returns the model to train."""
    check(cfg)
    kind = cfg.method.kind
    if kind == "full":
        return model.requires_grad_(True)
    family = family_of(model)
    if kind == "head_only":
        model.requires_grad_(False)
        for name, module in model.named_modules():
            if name_matches(name, family.head):
                module.requires_grad_(True)
        return model
    targets = targets_of(model, cfg.method.targets)
    saved = list(family.lora_modules_to_save)
    if cfg.impl == "ours":
        model = lora.apply_lora(
            model, targets, cfg.rank, cfg.alpha, cfg.dropout, modules_to_save=saved, use_rslora=cfg.use_rslora
        )
    else:
        model = _peft_model(model, targets, saved, cfg)
    return _seed_lora_a(model, cfg.seed)


def _peft_model(model: nn.Module, targets: str | list[str], saved: list[str], cfg: DictConfig) -> PeftModel:
    # PEFT's own all-linear would also catch pre_classifier (a head module); give it our resolved list.
    if targets == "all-linear":
        targets = lora.resolve_targets(model, targets)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=saved,
        use_rslora=cfg.use_rslora,
        bias="none",
    )
    return get_peft_model(model, config)


def _seed_lora_a(model: nn.Module, seed: int) -> nn.Module:
    """Draw every lora_A again from one seeded stream, in module order, so ours and PEFT start identical
    (PEFT consumes the global RNG differently while building its layers). B stays zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                init = torch.empty(p.shape)
                nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=g)
                p.copy_(init)
    return model


def save(model: nn.Module, path: Path, base_name: str) -> Path | None:
    """Save a LoRA run's adapter in PEFT format; head-only and full runs keep nothing large."""
    if isinstance(model, PeftModel):
        model.save_pretrained(path)
        return path
    if hasattr(model, "lora_config"):
        return lora.save_adapter(model, path, base_model_name_or_path=base_name)
    return None
