"""In-house LoRA: the layer, injection by module name, merge/unmerge/disable, PEFT-format adapter files."""

from lora_lab.lora.adapter_io import load_adapter, save_adapter
from lora_lab.lora.inject import apply_lora, disable, lora_layers, merge, resolve_targets, unmerge
from lora_lab.lora.layer import LoRALinear

__all__ = [
    "LoRALinear",
    "apply_lora",
    "disable",
    "load_adapter",
    "lora_layers",
    "merge",
    "resolve_targets",
    "save_adapter",
    "unmerge",
]
