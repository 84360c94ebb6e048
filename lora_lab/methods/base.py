"""What every method kind is: a Method declares what trains, what a run keeps, how its row is named, its
implementations and the settings in its identity. Only the checks and names run at import; what touches a
model is imported where a method is applied, so that a bad setting fails before torch loads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from torch import nn

    from lora_lab.data import Encoded

IMPLS = ("ours", "peft")


def train_only(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Freeze everything but the modules named (by suffix)."""
    from lora_lab.lora.inject import name_matches

    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name_matches(name, names):
            module.requires_grad_(True)
    return model


class Method:
    """One kind of fine-tuning; the defaults suit a method with no settings, impls or files to keep."""

    impls: tuple[str, ...] = ()  # the values `impl` may take; a single one is fixed, not a setting
    settings: tuple[str, ...] = ()  # top-level config keys that shape this method's result
    # How the names of the parameters it adds begin (a part of the dotted name): params.count leaves them out
    # of the base model's size, the trainable-% denominator. PEFT's trained copies of the head are
    # "modules_to_save".
    adds: tuple[str, ...] = ()

    def check(self, cfg: DictConfig) -> None:
        """Settings that can be checked before anything loads."""
        if len(self.impls) > 1 and cfg.impl not in self.impls:
            raise ValueError(f"impl={cfg.impl!r} is not one of {self.impls}; use impl=ours or impl=peft")

    def impl(self, cfg: DictConfig) -> str | None:
        """The implementation a run uses: `impl` where there is a choice, else the only one (or none)."""
        return cfg.impl if len(self.impls) > 1 else next(iter(self.impls), None)

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        raise NotImplementedError

    def lr_ratios(self, model: nn.Module, cfg: DictConfig) -> dict[str, float]:
        """Trainable parameters (by name) that learn at a multiple of the run's learning rate; the rest learn
        at it. The optimizer groups them (train.optimizer_for)."""
        return {}

    def label(self, cfg: DictConfig) -> str:
        """The table's name of the row, e.g. "Q+V (r=8)"."""
        raise NotImplementedError

    def row(self, cfg: DictConfig) -> str:
        """The readable start of a run's name."""
        return cfg.method.kind

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path | None:
        """Keep what the run trained, when it is small (an adapter); None when nothing is kept."""
        return None

    def merge(self, model: nn.Module) -> nn.Module | None:
        """The model with its adapter folded into the base weights (inference at the base's cost), in
        place; None for methods whose additions cannot be folded."""
        return None

    def inputs(
        self, model: nn.Module, train: Encoded, evaluation: Encoded, cfg: DictConfig
    ) -> tuple[nn.Module, Encoded, Encoded]:
        """What the training loop runs on: the prepared model and the tokenised sets, as they are for all but
        the linear probe."""
        return model, train, evaluation

    def pads_left(self, model: nn.Module) -> bool:
        """Whether batches must pad on the left for `model` prepared this way, whatever its tokenizer says."""
        return False

    def unmerge(self, model: nn.Module) -> None:
        """Undo `merge`: the adapter apart from the base weights again, as it trained."""
        raise NotImplementedError

    @contextmanager
    def merged(self, model: nn.Module, cfg: DictConfig) -> Iterator[nn.Module]:
        """`model` with its additions folded into the base weights inside the block (the same function up to
        rounding, at the base's cost) and unfolded after, so that what is saved is what trained. A 4-bit
        base cannot take them, and methods that do not fold stay as they are."""
        folded = not cfg.quant and self.merge(model) is not None
        try:
            yield model
        finally:
            if folded:
                self.unmerge(model)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")  # a PeftModel (checked without importing peft)


def peft_merge(model: nn.Module) -> nn.Module:
    model.merge_adapter()
    return model
