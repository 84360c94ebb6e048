"""The methods that add nothing: the head alone (trained live, or as a linear probe on cached features), and
every weight."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lora_lab.families import family_of
from lora_lab.methods.base import Method, train_only

if TYPE_CHECKING:
    from torch import nn

    from lora_lab.data import Encoded


class HeadOnly(Method):
    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        return train_only(model, family_of(model).head)

    def label(self, cfg: DictConfig) -> str:
        return "Classification Head Only"


class HeadOnlyCached(HeadOnly):
    """Head-only as a linear probe (probe.py): the frozen encoder runs once per review, in eval mode."""

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if cfg.trainer.gradient_checkpointing:
            raise ValueError(
                "method=head_only_cached trains the head alone, with no activations to recompute; "
                "use trainer.gradient_checkpointing=false"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        if family_of(model).pools_last:
            raise ValueError(
                f"method=head_only_cached caches one vector per review, but {model.config.model_type}'s head "
                "reads every position; use method=head_only"
            )
        return super().prepare(model, cfg)

    def label(self, cfg: DictConfig) -> str:
        return "Classification Head Only (cached features)"

    def inputs(
        self, model: nn.Module, train: Encoded, evaluation: Encoded, cfg: DictConfig
    ) -> tuple[nn.Module, Encoded, Encoded]:
        """The head alone, and each set with the features it reads (from the disk cache where it can)."""
        import torch

        from lora_lab import probe

        head = model.get_submodule(family_of(model).head[0])
        trainer = cfg.trainer
        device = torch.device(trainer.device)
        train, evaluation = probe.cached(
            model,
            head,
            [train, evaluation],
            cfg.data.cache_dir,
            trainer.eval_batch_size,
            model.config.pad_token_id,
            device,
            trainer.precision,
            trainer.progress,
            cfg.force,
        )
        return probe.Probe(head), train, evaluation


class Full(Method):
    def check(self, cfg: DictConfig) -> None:
        if cfg.get("quant"):
            raise ValueError(
                "quant=nf4 freezes a 4-bit base; full fine-tuning cannot train it (use a LoRA method)"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        return model.requires_grad_(True)

    def label(self, cfg: DictConfig) -> str:
        return "Full Fine-Tuning"
