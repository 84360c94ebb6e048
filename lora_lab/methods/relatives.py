"""LoRA's relatives: IA3 (ours or PEFT's), bottleneck adapters (ours), prompt and prefix tuning (PEFT's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lora_lab.config import is_int, require
from lora_lab.families import family_of
from lora_lab.methods.base import IMPLS, Method, is_peft, peft_merge

if TYPE_CHECKING:
    from torch import nn


class IA3(Method):
    """(IA)^3: learned rescaling of keys, values and the feed-forward's inner activations (ia3.py), ours or
    PEFT's, with the head trained in full."""

    impls = IMPLS
    settings = ("impl",)
    adds = ("ia3_", "modules_to_save")

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if cfg.get("quant"):
            raise ValueError(
                "quant=nf4 stores the base in 4-bit integers, which IA3's scaling vectors cannot multiply "
                "in place; use quant=null with method=ia3, or a LoRA method on the 4-bit base"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import ia3, lora

        family = family_of(model)
        targets = lora.resolve_targets(model, f"{family.keys_values}|{family.ffn_out}")
        feedforward = lora.resolve_targets(model, family.ffn_out)
        saved = list(family.lora_modules_to_save)
        if cfg.impl == "ours":
            return ia3.apply_ia3(model, targets, feedforward, saved)
        from peft import IA3Config, TaskType, get_peft_model

        config = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=saved,
        )
        return get_peft_model(model, config)

    def label(self, cfg: DictConfig) -> str:
        return "IA3 (keys, values, FFN)"

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path | None:
        if is_peft(model):
            model.save_pretrained(path)
            return path
        return None

    def merge(self, model: nn.Module) -> nn.Module:
        from lora_lab import ia3

        if is_peft(model):
            return peft_merge(model)
        for layer in ia3.ia3_layers(model):
            layer.merge()
        return model

    def unmerge(self, model: nn.Module) -> None:
        from lora_lab import ia3

        if is_peft(model):
            model.unmerge_adapter()
            return
        for layer in ia3.ia3_layers(model):
            layer.unmerge()


class Bottleneck(Method):
    """Bottleneck adapters in series after sublayer outputs (bottleneck.py): Houlsby (attention and
    feed-forward) or Pfeiffer (feed-forward only), by `method.placement`. In-house only: PEFT has none."""

    impls = ("ours",)
    adds = ("adapter_",)
    PLACEMENTS = ("houlsby", "pfeiffer")

    def check(self, cfg: DictConfig) -> None:
        placement = cfg.method.get("placement")
        require(placement in self.PLACEMENTS, "method.placement", placement, f"one of {self.PLACEMENTS}")

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import bottleneck

        family = family_of(model)
        after = (
            family.ffn_out if cfg.method.placement == "pfeiffer" else f"{family.attn_out}|{family.ffn_out}"
        )
        return bottleneck.apply_bottleneck(
            model, after, cfg.method.reduction_factor, list(family.lora_modules_to_save)
        )

    def label(self, cfg: DictConfig) -> str:
        return f"{cfg.method.placement.capitalize()} adapters (d/{cfg.method.reduction_factor})"

    def row(self, cfg: DictConfig) -> str:
        return f"{cfg.method.placement}_rf{cfg.method.reduction_factor}"


class PromptLearning(Method):
    """Prompt tuning (Lester et al. 2021: trained embeddings of virtual tokens before the input) or prefix
    tuning (Li and Liang 2021: trained keys and values at every layer), through PEFT only, with the head
    trained in full (PEFT's SEQ_CLS does)."""

    impls = ("peft",)
    adds = ("prompt_encoder", "modules_to_save")

    def __init__(self, name: str, peft_config: str, prepends_tokens: bool) -> None:
        self.name, self.peft_config, self.prepends_tokens = name, peft_config, prepends_tokens

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        n = cfg.method.num_virtual_tokens
        require(is_int(n) and n >= 1, "method.num_virtual_tokens", n, "a whole number of tokens >= 1")

    def pads_left(self, model: nn.Module) -> bool:
        """Prompt tuning hands the model embeddings, in which it cannot find the padding: a decoder then pools
        on the last position, a pad under right padding. Padding on the left puts the review's last token
        there (prefix tuning passes the ids and pools right either way)."""
        return self.prepends_tokens and family_of(model).pools_last

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        import peft

        config = getattr(peft, self.peft_config)(
            task_type=peft.TaskType.SEQ_CLS,
            num_virtual_tokens=cfg.method.num_virtual_tokens,
            # PEFT reads these from the model's config by their usual names, which DistilBERT's lacks
            token_dim=model.get_input_embeddings().embedding_dim,
            num_layers=model.config.num_hidden_layers,
            num_attention_heads=model.config.num_attention_heads,
        )
        return peft.get_peft_model(model, config)

    def label(self, cfg: DictConfig) -> str:
        return f"{self.name} ({cfg.method.num_virtual_tokens} tokens)"

    def row(self, cfg: DictConfig) -> str:
        return f"{cfg.method.kind}_v{cfg.method.num_virtual_tokens}"
