"""Put LoRA layers into a model by module name, and switch them (merge, unmerge, disable)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.layer import LoRALinear, layer_class
from lora_lab.lora.settings import LoRASettings

# Output heads: never given LoRA by "all-linear"; they are trained in full when listed in modules_to_save.
HEAD_NAMES = ("classifier", "pre_classifier", "score", "lm_head")

Targets = str | Sequence[str]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D)) and not isinstance(module, LoRALinear)


def name_matches(name: str, suffixes: Sequence[str]) -> bool:
    """PEFT's list form: the whole name, or a suffix that starts at a dot."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_linear(module)]


def is_head(model: nn.Module, name: str) -> bool:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and model.get_submodule(name) is output:
        return True
    return any(part in HEAD_NAMES for part in name.split("."))


def resolve_targets(model: nn.Module, targets: Targets) -> list[str]:
    """Names of the modules `targets` selects.

    A list/tuple matches name suffixes (every entry must match something); "all-linear" takes every
    Linear/Conv1D outside the output head; any other string is a regex that must match a whole name.
    """
    candidates = linear_names(model)
    if isinstance(targets, str) and targets == "all-linear":
        names = [n for n in candidates if not is_head(model, n)]
    elif isinstance(targets, str):
        pattern = re.compile(targets)
        names = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
        if not names:
            raise ValueError(f"target regex {targets!r} matches no module. {_linear_hint(candidates)}")
    else:
        if not targets:
            raise ValueError(f"targets is empty; name the modules to adapt. {_linear_hint(candidates)}")
        missing = [t for t in targets if not any(name_matches(n, [t]) for n, _ in model.named_modules())]
        if missing:
            raise ValueError(f"target module(s) {missing} not found in the model. {_linear_hint(candidates)}")
        names = [n for n, _ in model.named_modules() if name_matches(n, targets)]
    not_linear = [n for n in names if not is_linear(model.get_submodule(n))]
    if not_linear:
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in not_linear})
        raise ValueError(
            f"targets select non-linear modules ({', '.join(kinds)}: {not_linear[:3]}...). "
            f"{_linear_hint(candidates)}"
        )
    return names


def _linear_hint(candidates: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in candidates})
    return f"Linear modules in this model (by last name): {leaves}"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """What `apply_lora` put on a model, kept on it (`model.lora_adapter`) so that save_adapter can describe
    the adapter without being told."""

    settings: LoRASettings
    targets: list[str]  # the adapted modules' full names
    modules_to_save: list[str]  # trained in full beside the adapter (the classification head)


def apply_lora(
    model: nn.Module,
    targets: Targets,
    settings: LoRASettings | None = None,
    modules_to_save: Sequence[str] = (),
    **fields: object,
) -> nn.Module:
    """Freeze `model`, wrap the targeted linears in LoRA layers, and unfreeze `modules_to_save` in place.

    `settings` (or its fields as keywords: rank=8, alpha=16, use_dora=True, init="pissa") describe the
    adapter. `modules_to_save` names (suffix match, as for targets) are trained in full: the classification
    head, typically. Returns the same model object, modified.
    """
    settings = settings or LoRASettings(**fields)
    names = resolve_targets(model, targets)
    check_modules_to_save(model, names, modules_to_save)
    # Check every layer before building any (PiSSA/OLoRA rewrite the base weight), so that a bad setting
    # leaves the model unmodified.
    cls = layer_class(settings)
    for name in names:
        cls.check(model.get_submodule(name), settings)
    replace(model, {n: cls(model.get_submodule(n), settings) for n in names}, modules_to_save)
    model.lora_adapter = Adapter(settings, names, list(modules_to_save))
    return model


def check_modules_to_save(model: nn.Module, targets: Sequence[str], modules_to_save: Sequence[str]) -> None:
    """The modules to train in full exist and are not also wrapped."""
    both = [n for n in targets if name_matches(n, modules_to_save)]
    if both:
        raise ValueError(f"{both} are both adapter targets and modules_to_save; choose one")
    missing = [m for m in modules_to_save if not any(name_matches(n, [m]) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"modules_to_save {missing} not found in the model")


def replace(model: nn.Module, wrappers: dict[str, nn.Module], modules_to_save: Sequence[str]) -> None:
    """Freeze `model`, put each wrapper where the module it is named after was, and train the
    `modules_to_save` (suffix match) in full: how every adapter method (LoRA, IA3, bottleneck) goes in."""
    model.requires_grad_(False)
    for name, wrapper in wrappers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper)
    for name, module in model.named_modules():
        if name_matches(name, modules_to_save):
            module.requires_grad_(True)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def use_cheap_dropout(model: nn.Module, on: bool) -> nn.Module:
    """Whether the LoRA layers draw their dropout masks with lora_lab.dropout (on) or torch's own dropout,
    following the setting that decides it for the model's own dropout layers."""
    for _, layer in lora_layers(model):
        layer.cheap_dropout = on
    return model


def merge(model: nn.Module) -> nn.Module:
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


@contextmanager
def disable(model: nn.Module) -> Iterator[nn.Module]:
    """Run the model without its LoRA updates (merged layers are unmerged for the duration)."""
    layers = [layer for _, layer in lora_layers(model)]
    was_merged = [layer.merged for layer in layers]
    for layer in layers:
        layer.unmerge()
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, merged in zip(layers, was_merged, strict=True):
            layer.enabled = True
            if merged:
                layer.merge()
