"""In-house LoRA (and DoRA, PiSSA, OLoRA): the layer, injection by module name, merge/unmerge/disable,
PEFT-format adapter files. Knows nothing of Hydra: settings arrive as a `LoRASettings`."""

from lora_lab.lora.adapter_io import load_adapter, save_adapter
from lora_lab.lora.inject import (
    apply_lora,
    disable,
    lora_layers,
    merge,
    resolve_targets,
    unmerge,
    use_cheap_dropout,
)
from lora_lab.lora.layer import DoRALinear, LoRALinear
from lora_lab.lora.settings import LoRASettings

__all__ = [
    "DoRALinear",
    "LoRALinear",
    "LoRASettings",
    "apply_lora",
    "disable",
    "load_adapter",
    "lora_layers",
    "merge",
    "resolve_targets",
    "save_adapter",
    "unmerge",
    "use_cheap_dropout",
]
