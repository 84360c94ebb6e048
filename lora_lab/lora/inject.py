"""Put LoRA layers into a model by module name, and switch them (merge, unmerge, disable)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_lab.lora.layer import LoRALinear

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
            raise ValueError("targets is empty; name the modules to adapt, e.g. ['q_lin', 'v_lin']")
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


def apply_lora(
    model: nn.Module,
    targets: Targets,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
    use_rslora: bool = False,
    init: str = "kaiming",
) -> nn.Module:
    """Freeze `model`, wrap the targeted linears in LoRALinear, and unfreeze `modules_to_save` in place.

    `modules_to_save` names (suffix match, as for targets) are trained in full: the classification head,
    typically. Returns the same model object, modified.
    """
    names = resolve_targets(model, targets)
    heads_adapted = [n for n in names if name_matches(n, modules_to_save)]
    if heads_adapted:
        raise ValueError(f"{heads_adapted} are both LoRA targets and modules_to_save; choose one")
    missing = [m for m in modules_to_save if not any(name_matches(n, [m]) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"modules_to_save {missing} not found in the model")
    # Build every layer before touching the model, so a bad setting leaves it unmodified.
    wrapped = {n: LoRALinear(model.get_submodule(n), rank, alpha, dropout, use_rslora, init) for n in names}
    model.requires_grad_(False)
    for name, layer in wrapped.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    for name, module in model.named_modules():
        if name_matches(name, modules_to_save):
            module.requires_grad_(True)
    model.lora_config = {  # what save_adapter writes; kept on the model so the adapter describes itself
        "target_modules": names,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "init": init,
        "modules_to_save": list(modules_to_save),
    }
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


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
