"""Adapter files in PEFT's format, so PEFT loads ours and we load PEFT's.

A directory holds `adapter_config.json` (a LoraConfig PEFT understands) and `adapter_model.safetensors`
with PEFT's key names: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` for each adapted
module (and `.lora_magnitude_vector` for DoRA), and `base_model.model.<module>.<param>` for each module
trained in full (modules_to_save).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from lora_lab.atomic import write_bytes_atomic, write_text_atomic
from lora_lab.lora.inject import apply_lora, lora_layers, name_matches, resolve_targets
from lora_lab.lora.layer import layer_class, linear_shape
from lora_lab.lora.settings import LoRASettings, from_peft, to_peft

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (the live parameters) under PEFT's key names."""
    state = {}
    for name, layer in lora_layers(model):
        for suffix, tensor in layer.adapter_tensors().items():
            state[f"{PREFIX}{name}.{suffix}"] = tensor
    state.update(_saved_modules_state(model, model.lora_adapter.modules_to_save))
    return state


def _saved_modules_state(model: nn.Module, modules_to_save: list[str]) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if name_matches(name, modules_to_save):
            for pname, param in module.named_parameters():
                state[f"{PREFIX}{name}.{pname}"] = param
    return state


def _converted(model: nn.Module) -> tuple[LoRASettings, dict[str, torch.Tensor]]:
    """The adapter as one on the original base weight, for PiSSA/OLoRA (whose training base is W - s B0 A0):
    rank 2r with A' = [A; A0] and B' = [B, -B0], so s' B' A' = s (B A - B0 A0), alpha changed to keep s'
    = s. PEFT converts the same way (path_initial_model_for_weight_conversion). Other inits: as they are."""
    adapter = model.lora_adapter
    settings, state = adapter.settings, {k: v.detach() for k, v in adapter_state_dict(model).items()}
    if not settings.keeps_initial:
        return settings, state
    for name, layer in lora_layers(model):
        state[f"{PREFIX}{name}.lora_A.weight"] = torch.cat([layer.lora_A, layer.initial_A], dim=0).detach()
        state[f"{PREFIX}{name}.lora_B.weight"] = torch.cat([layer.lora_B, -layer.initial_B], dim=1).detach()
    grow = math.sqrt(2) if settings.use_rslora else 2
    settings = dataclasses.replace(
        settings, rank=2 * settings.rank, alpha=grow * settings.alpha, init="kaiming"
    )
    return settings, state


def save_adapter(
    model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Write the adapter of a model prepared by `apply_lora` (PiSSA/OLoRA converted to a plain LoRA on the
    original base, see `_converted`); returns the directory."""
    if not hasattr(model, "lora_adapter"):
        raise ValueError("model has no LoRA adapter; call lora_lab.lora.apply_lora first")
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("adapter is merged into the base weights; call unmerge(model) before save_adapter")
    adapter = model.lora_adapter
    settings, state = _converted(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        **to_peft(settings, adapter.targets, adapter.modules_to_save),
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in lora_layers(model)),
        "bias": "none",
        "inference_mode": True,
    }
    tensors = {k: v.contiguous().cpu() for k, v in state.items()}
    write_bytes_atomic(path / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_text_atomic(path / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in `path` (by us or by PEFT) to a base model and load its weights.

    All or nothing: the files are read and every tensor's name and shape checked before the model is
    touched, so a bad adapter leaves it as it was. A model that already carries an adapter with the same
    targets and shapes gets the new weights (and scaling) in place: hot-swapping adapters on one base."""
    path = Path(path)
    config, saved = _read(path)
    if hasattr(model, "lora_adapter"):
        return _swap(model, path, config, saved)
    settings, targets, to_save = from_peft(config)
    # PEFT's SEQ_CLS task type lists both "classifier" and "score"; keep the ones this model has.
    names = [n for n, _ in model.named_modules()]
    to_save = [m for m in to_save if any(name_matches(n, [m]) for n in names)]
    try:
        targets = resolve_targets(model, targets)
    except ValueError as err:
        raise ValueError(f"adapter in {path} does not fit this model: {err}") from None
    expected = {}
    for name in targets:
        shapes = layer_class(settings).tensor_shapes(settings, *linear_shape(model.get_submodule(name)))
        expected.update({f"{PREFIX}{name}.{suffix}": shape for suffix, shape in shapes.items()})
    expected.update({k: tuple(v.shape) for k, v in _saved_modules_state(model, to_save).items()})
    _check_fit(path, expected, saved)
    apply_lora(model, targets, settings, modules_to_save=to_save)  # checks the settings before any change
    _copy(model, saved)
    return model


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter's config and tensors, with errors that name the file at fault."""
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(
            f"{path} is not an adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); save the adapter again") from err
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise ValueError(f"{config_file} describes a {kind} adapter; only LORA adapters load here")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        raise ValueError(f"{config_file} lacks {missing}; save the adapter again")
    try:
        saved = load_file(str(weights_file))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(
            f"{weights_file} cannot be read ({err}); it may be truncated: save it again"
        ) from err
    return config, saved


def _check_fit(path: Path, expected: dict[str, tuple[int, ...]], saved: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter in {path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    wrong = [
        (k, tuple(saved[k].shape), shape) for k, shape in expected.items() if tuple(saved[k].shape) != shape
    ]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(
            f"adapter in {path} does not fit this model: {key} has shape {got}, the model needs {want} "
            f"({len(wrong)} tensor(s) differ; a different rank or base model?)"
        )


def _swap(model: nn.Module, path: Path, config: dict, saved: dict[str, torch.Tensor]) -> nn.Module:
    """Load an adapter of the same targets, shapes and kind into a model's LoRA layers, in place."""
    current = adapter_state_dict(model)
    try:
        _check_fit(path, {k: tuple(v.shape) for k, v in current.items()}, saved)
    except ValueError as err:
        raise ValueError(
            f"{err}. The model already carries an adapter: hot-swapping needs the same targets and rank; "
            "load a different one onto a fresh base model"
        ) from None
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("the model's adapter is merged; call unmerge(model) before loading another")
    adapter = model.lora_adapter
    new, _, _ = from_peft(config)
    if new.init != adapter.settings.init and adapter.settings.keeps_initial:
        raise ValueError(
            f"the model's base was rewritten by init={adapter.settings.init}; load onto a fresh base"
        )
    settings = dataclasses.replace(
        adapter.settings, alpha=new.alpha, dropout=new.dropout, use_rslora=new.use_rslora
    )
    settings.check(*linear_shape(layers[0].base_layer))
    for layer in layers:
        layer.settings = settings
    model.lora_adapter = dataclasses.replace(adapter, settings=settings)
    _copy(model, saved)
    return model


def _copy(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in adapter_state_dict(model).items():
            tensor.copy_(saved[key])
