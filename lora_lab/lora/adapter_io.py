"""Adapter files in PEFT's format, so PEFT loads ours and we load PEFT's.

A directory holds `adapter_config.json` (a LoraConfig PEFT understands) and `adapter_model.safetensors`
with PEFT's key names: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` for each adapted
module, and `base_model.model.<module>.<param>` for each module trained in full (modules_to_save).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lora_lab.atomic import write_atomic, write_text_atomic
from lora_lab.lora.inject import apply_lora, lora_layers, name_matches

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's key names."""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        state[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach()
    for name, module in model.named_modules():
        if name_matches(name, model.lora_config["modules_to_save"]):
            for pname, param in module.named_parameters():
                state[f"{PREFIX}{name}.{pname}"] = param.detach()
    return state


def save_adapter(
    model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Write the adapter of a model prepared by `apply_lora`; returns the directory."""
    if not hasattr(model, "lora_config"):
        raise ValueError("model has no LoRA adapter; call lora_lab.lora.apply_lora first")
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("adapter is merged into the base weights; call unmerge(model) before save_adapter")
    cfg = model.lora_config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg["r"],
        "lora_alpha": cfg["lora_alpha"],
        "lora_dropout": cfg["lora_dropout"],
        "use_rslora": cfg["use_rslora"],
        "init_lora_weights": True if cfg["init"] == "kaiming" else "gaussian",
        "target_modules": cfg["target_modules"],
        "modules_to_save": cfg["modules_to_save"],
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in lora_layers(model)),
        "bias": "none",
        "inference_mode": True,
    }
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    write_atomic(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text_atomic(path / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in `path` (by us or by PEFT) to a plain base model and load its weights."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path} holds a {config.get('peft_type')} adapter; only LORA is supported")
    # PEFT's SEQ_CLS task type lists both "classifier" and "score"; keep the ones this model has.
    names = [n for n, _ in model.named_modules()]
    to_save = [m for m in config.get("modules_to_save") or [] if any(name_matches(n, [m]) for n in names)]
    init = config.get("init_lora_weights", True)
    apply_lora(
        model,
        targets=config["target_modules"],
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout", 0.0),
        modules_to_save=to_save,
        use_rslora=config.get("use_rslora", False),
        init="gaussian" if init == "gaussian" else "kaiming",
    )
    expected = adapter_state_dict(model)
    saved = load_file(str(path / WEIGHTS_FILE))
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter in {path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(saved[key])
    return model
