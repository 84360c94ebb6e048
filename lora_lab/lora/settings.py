"""LoRA's settings in one object, each field declared once with everything the rest of the code asks of it.

A field is an `option(...)`: its default, the rule its values follow (checked before any model loads), its
name in PEFT's LoraConfig and, for a variant, its name in the table and run name and the layer class that
runs it. The checks, the PEFT translation (both directions), the adapter files, the run identity and the
labels all read these declarations, so a new variant is one field here, plus its layer class when it
computes something new (docs/contributing.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INITS = ("kaiming", "gaussian", "pissa", "olora")
RANDOM_INITS = ("kaiming", "gaussian")  # A drawn at random, B zero (the others start from the base's weights)


@dataclasses.dataclass(frozen=True)
class Option:
    """What one LoRASettings field means outside it (see `option`)."""

    rule: str  # what a value must be, as the error says it: "<name> must be <rule>, got ..."
    valid: Callable[[Any], bool]
    peft: str | None  # its LoraConfig field; None: PEFT has none (impl=peft refuses the option when set)
    to_peft: Callable[[Any], Any]
    from_peft: Callable[[Any], Any]
    hint: str  # appended to the error: how to fix it
    names: Mapping[Any, tuple[str, str]]  # value -> (table label, run-name part): values naming a variant
    layer: str | None  # "module.Class": the LoRALinear subclass that runs this option when it is true


def option(
    default: Any,
    rule: str,
    valid: Callable[[Any], bool],
    *,
    peft: str | None,
    to_peft: Callable[[Any], Any] = lambda value: value,
    from_peft: Callable[[Any], Any] = lambda value: value,
    hint: str = "",
    names: Mapping[Any, tuple[str, str]] | None = None,
    layer: str | None = None,
) -> Any:
    """A LoRASettings field and its declaration: the one place a LoRA option or variant is described."""
    spec = Option(rule, valid, peft, to_peft, from_peft, hint, names or {}, layer)
    return dataclasses.field(default=default, metadata={"option": spec})


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_flag(value: object) -> bool:
    return isinstance(value, bool)


def _init_from_peft(value: object) -> str:
    """PEFT's init_lora_weights as ours: True/False (random A; a loaded adapter overwrites it) are kaiming."""
    if value is True or value is False:
        return "kaiming"
    if value not in INITS:
        raise ValueError(
            f"init_lora_weights={value!r} cannot be replayed here (ours: {sorted(INITS[1:])}); "
            "save the adapter from PEFT with path_initial_model_for_weight_conversion so that it loads as a "
            "plain LoRA"
        )
    return str(value)


@dataclasses.dataclass(frozen=True)
class LoRASettings:
    """What one LoRA adapter is: rank, scaling, dropout, initialisation and variant. The field names are the
    run's config keys; a new one defaults to what runs did before it existed, so their names do not change."""

    rank: int = option(
        8,
        "a positive integer",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        peft="r",
        hint="use e.g. rank=8",
    )
    alpha: float = option(
        16.0,
        "> 0",
        lambda v: _is_number(v) and v > 0,
        peft="lora_alpha",
        hint="the usual choice is alpha=2*rank",
    )
    dropout: float = option(
        0.0,
        "in [0, 1)",
        lambda v: _is_number(v) and 0 <= v < 1,
        peft="lora_dropout",
        from_peft=lambda v: v or 0.0,
    )
    use_rslora: bool = option(False, "true or false", _is_flag, peft="use_rslora")  # scaling alpha / sqrt(r)
    init: str = option(  # kaiming | gaussian (A random, B zero) | pissa (SVD) | olora (QR): see layer.py
        "kaiming",
        f"one of {INITS}",
        lambda v: v in INITS,
        peft="init_lora_weights",
        to_peft=lambda v: True if v == "kaiming" else v,  # PEFT's default (True) is kaiming-uniform A
        from_peft=_init_from_peft,
        names={"pissa": ("PiSSA", "pissa"), "olora": ("OLoRA", "olora")},
    )
    use_dora: bool = option(  # DoRA: a trained magnitude per output row
        False,
        "true or false",
        _is_flag,
        peft="use_dora",
        names={True: ("DoRA", "dora")},
        layer="lora_lab.lora.layer.DoRALinear",
    )

    @classmethod
    def from_options(cls, **options: Any) -> LoRASettings:
        """Settings from config values, where null (or absent) means the default."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    def options(self) -> list[tuple[str, Option, Any]]:
        """(name, declaration, value) of every field, in declaration order."""
        return [(f.name, f.metadata["option"], getattr(self, f.name)) for f in dataclasses.fields(self)]

    def changed(self) -> set[str]:
        """The fields set away from their default."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}

    @property
    def scaling(self) -> float:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (rank-stabilised scaling)."""
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    @property
    def keeps_initial(self) -> bool:
        """Inits that move part of W into A and B: saving converts the adapter to one on the original W."""
        return self.init in ("pissa", "olora")

    def variants(self) -> list[tuple[str, str]]:
        """The named variants these settings turn on, as (table label, run-name part), in field order."""
        return [spec.names[value] for _, spec, value in self.options() if _named(spec, value)]

    def layer(self) -> str | None:
        """The dotted path of the layer class a variant asks for; None: the plain LoRALinear."""
        layers = {name: spec.layer for name, spec, value in self.options() if spec.layer and value}
        if len(layers) > 1:
            raise ValueError(f"{' and '.join(layers)} each need their own layer class; turn on one of them")
        return next(iter(layers.values()), None)

    def check(self, d_in: int | None = None, d_out: int | None = None) -> None:
        """Reject settings that would silently train nothing or blow up, with the fix in the message; with a
        layer's shape, also a rank it cannot hold."""
        for name, spec, value in self.options():
            if not spec.valid(value):
                hint = f"; {spec.hint}" if spec.hint else ""
                raise ValueError(f"{name} must be {spec.rule}, got {value!r}{hint}")
        if d_in is not None and d_out is not None and self.rank > min(d_in, d_out):
            raise ValueError(
                f"rank={self.rank} exceeds min(d_in, d_out)={min(d_in, d_out)} of a {d_in}x{d_out} layer; "
                f"use rank <= {min(d_in, d_out)}"
            )
        self.layer()  # refuses two variants that each need their own layer class

    def without_peft(self) -> list[str]:
        """The options set away from their default that PEFT has no field for (impl=peft cannot run them)."""
        changed = self.changed()
        return [
            f"{name}={value!r}" for name, spec, value in self.options() if name in changed and not spec.peft
        ]


def _named(spec: Option, value: object) -> bool:
    """Whether `value` names a variant; a bool key matches only a bool (True is not the rank 1)."""
    return any(key == value and type(key) is type(value) for key in spec.names)


def layer_path(path: str) -> type:
    """The class at a dotted path (declarations name layers by path: this module is imported before torch)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def to_peft(settings: LoRASettings, targets: Sequence[str] | str, modules_to_save: Sequence[str]) -> dict:
    """LoraConfig keyword arguments for these settings (what PEFT builds from, and an adapter file holds). An
    option PEFT lacks is kept under its own name when set: PEFT does not read it, `from_peft` does."""
    changed = settings.changed()
    fields = {
        spec.peft or name: spec.to_peft(value)
        for name, spec, value in settings.options()
        if spec.peft or name in changed
    }
    return {
        **fields,
        "target_modules": targets if isinstance(targets, str) else list(targets),
        "modules_to_save": list(modules_to_save),
    }


def from_peft(config: Mapping[str, Any]) -> tuple[LoRASettings, list[str] | str, list[str]]:
    """(settings, target_modules, modules_to_save) of a PEFT adapter_config; an option the file does not name
    keeps its default, and an init we cannot replay is refused."""
    values = {}
    for f in dataclasses.fields(LoRASettings):
        spec = f.metadata["option"]
        key = spec.peft or f.name
        if key in config:
            values[f.name] = spec.from_peft(config[key])
    return LoRASettings(**values), config["target_modules"], list(config.get("modules_to_save") or [])
