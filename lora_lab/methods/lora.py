"""LoRA as a method: ours (lora_lab.lora) or PEFT's, its variants named, the head trained beside it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from lora_lab.config import is_number, require, seeds_of
from lora_lab.families import FAMILIES, family_of
from lora_lab.lora.settings import RANDOM_INITS, LoRASettings, to_peft
from lora_lab.methods.base import IMPLS, Method, is_peft, peft_merge

if TYPE_CHECKING:
    from torch import nn

TARGET_LABELS = {"qv": "Q+V", "attn": "All Attention", "attn_ffn": "All Attention+FFN"}


def targets_of(model: nn.Module, targets: str | Sequence[str]) -> str | list[str]:
    """A preset name (qv, attn, attn_ffn) resolved for this model's family, or explicit names / a regex."""
    if isinstance(targets, (list, tuple, ListConfig)):
        return list(targets)
    if targets in TARGET_LABELS:
        return list(family_of(model).targets[targets])
    return str(targets)  # "all-linear" or a regex


class LoRA(Method):
    """Low-rank adapters (and the DoRA, PiSSA/OLoRA and LoRA+ variants), ours or PEFT's, with the
    classification head trained in full beside them.

    `options` is the settings class whose fields are the run's LoRA keys: LoRASettings, or a subclass that
    declares a variant from outside the repository (`methods.METHODS["lora"] = LoRA(MySettings)`)."""

    impls = IMPLS
    adds = ("lora_", "modules_to_save")

    def __init__(self, options: type[LoRASettings] = LoRASettings) -> None:
        self.options = options
        self.settings = ("impl", "lora_lr", "lora_plus_ratio", *(f.name for f in dataclasses.fields(options)))

    def settings_of(self, cfg: DictConfig) -> LoRASettings:
        """The LoRA settings of a config: its top-level keys named like the fields (null/absent: default)."""
        fields = dataclasses.fields(self.options)
        return self.options.from_options(**{f.name: cfg.get(f.name) for f in fields})

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        ratio = cfg.get("lora_plus_ratio")
        ok = ratio is None or (is_number(ratio) and ratio > 0)
        require(ok, "lora_plus_ratio", ratio, "B's learning rate over A's (> 0; LoRA+ uses 16), or null")
        settings = self.settings_of(cfg)
        settings.check()  # rank, alpha, dropout, init, flags: before any model loads
        if cfg.impl == "peft" and (missing := settings.without_peft()):
            raise ValueError(f"{', '.join(missing)} has no PEFT counterpart; use impl=ours")
        targets = cfg.method.targets
        if not isinstance(targets, str) and len(targets) == 0:
            model_type = cfg.model.get("model_type")
            family = FAMILIES.get(model_type)
            qv = f"[{','.join(family.targets['qv'])}] ({model_type}'s query and value)" if family else "[...]"
            raise ValueError(
                f"method.targets=[] adapts nothing; name the modules to adapt, e.g. method.targets={qv}"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import lora

        family = family_of(model)
        targets = targets_of(model, cfg.method.targets)
        saved = list(family.lora_modules_to_save)
        settings = self.settings_of(cfg)
        if cfg.impl == "ours":
            model = lora.apply_lora(model, targets, settings, modules_to_save=saved)
        else:
            model = _peft_lora(model, targets, saved, settings)
        if settings.init in RANDOM_INITS:
            _seed_lora_a(model, settings.init, seeds_of(cfg)["init"])
        return model

    def lr_ratios(self, model: nn.Module, cfg: DictConfig) -> dict[str, float]:
        """LoRA+ (Hayou et al. 2024): B learns `lora_plus_ratio` times faster than A. Grouped as PEFT's
        create_loraplus_optimizer groups: every lora_B and every other trainable 1-D tensor (biases, norms,
        DoRA's magnitudes, the head's bias) at the ratio; the paper speeds up B alone."""
        ratio = cfg.get("lora_plus_ratio")
        if not ratio:
            return {}
        return {
            name: ratio
            for name, p in model.named_parameters()
            if p.requires_grad and ("lora_B" in name or p.dim() == 1)
        }

    def label(self, cfg: DictConfig) -> str:
        targets = cfg.method.targets
        name = TARGET_LABELS.get(targets, targets if isinstance(targets, str) else "+".join(targets))
        variant = ", ".join(label for label, _ in self.variants(cfg))
        return f"{name} (r={cfg.rank}{', ' + variant if variant else ''})"

    def row(self, cfg: DictConfig) -> str:
        targets = cfg.method.targets if isinstance(cfg.method.targets, str) else "custom"
        variant = "".join(f"_{slug}" for _, slug in self.variants(cfg))
        return f"{targets}_r{cfg.rank}{variant}"

    def variants(self, cfg: DictConfig) -> list[tuple[str, str]]:
        """The named variants a config turns on, as (label, run-name part): those its settings declare, then
        LoRA+ (a learning-rate split) and QLoRA (LoRA on an NF4 base), which live outside the settings."""
        names = self.settings_of(cfg).variants()
        if cfg.get("lora_plus_ratio"):
            names.append(("LoRA+", "loraplus"))
        if cfg.get("quant"):
            names.append((f"{cfg.quant.upper()} base", cfg.quant))
        return names

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path:
        """The adapter in PEFT's format (PiSSA/OLoRA converted to a plain LoRA on the original base)."""
        from lora_lab import lora

        if not is_peft(model):
            return lora.save_adapter(model, path, base_model_name_or_path=base_name)
        model.save_pretrained(path)  # PEFT's own PiSSA/OLoRA files replay the init on the original base
        return path

    def merge(self, model: nn.Module) -> nn.Module:
        from lora_lab import lora

        return peft_merge(model) if is_peft(model) else lora.merge(model)

    def unmerge(self, model: nn.Module) -> None:
        from lora_lab import lora

        model.unmerge_adapter() if is_peft(model) else lora.unmerge(model)


def _peft_lora(
    model: nn.Module, targets: str | list[str], saved: list[str], settings: LoRASettings
) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model  # slow to import; only impl=peft needs it

    from lora_lab import lora

    # PEFT's own all-linear would also catch pre_classifier (a head module); give it our resolved list.
    if targets == "all-linear":
        targets = lora.resolve_targets(model, targets)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, bias="none", **to_peft(settings, targets, saved))
    return get_peft_model(model, config)


def _seed_lora_a(model: nn.Module, init: str, seed: int) -> None:
    """Draw every lora_A again from one seeded stream, in module order, so ours and PEFT start identical
    (PEFT consumes the global RNG differently while building its layers). B stays zero."""
    import torch

    from lora_lab.lora.layer import random_a

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(random_a(p.shape, init, g))
