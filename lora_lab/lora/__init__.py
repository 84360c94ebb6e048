"""In-house LoRA (and DoRA, PiSSA, OLoRA): the layer, injection by module name, merge/unmerge/disable,
PEFT-format adapter files. Knows nothing of Hydra: settings arrive as a `LoRASettings`.

The names below load on first use (PEP 562's module `__getattr__`), so that checking a `LoRASettings` (a
bad rank on the command line) does not wait for torch and transformers to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {  # name -> the submodule that defines it
    "load_adapter": "adapter_io",
    "save_adapter": "adapter_io",
    "apply_lora": "inject",
    "disable": "inject",
    "lora_layers": "inject",
    "merge": "inject",
    "resolve_targets": "inject",
    "unmerge": "inject",
    "use_cheap_dropout": "inject",
    "DoRALinear": "layer",
    "LoRALinear": "layer",
    "LoRASettings": "settings",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
