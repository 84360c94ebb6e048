"""LoRA's settings in one object, and the one translation between them and PEFT's LoraConfig fields.

The layer, injection, the adapter files (both directions) and the run identity all read `LoRASettings`; a new
variant adds its field here and nowhere else in this package.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

INITS = ("kaiming", "gaussian", "pissa", "olora")
RANDOM_INITS = ("kaiming", "gaussian")  # A drawn at random, B zero (the others start from the base's weights)
# PEFT's init_lora_weights for each of ours (True is its default: kaiming-uniform A, zero B).
PEFT_INIT: dict[str, bool | str] = {
    "kaiming": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "olora": "olora",
}


@dataclasses.dataclass(frozen=True)
class LoRASettings:
    """What one LoRA adapter is: rank, scaling, dropout, initialisation and variant."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    init: str = "kaiming"  # kaiming | gaussian (A random, B zero) | pissa (SVD) | olora (QR): see layer.py
    use_dora: bool = False  # DoRA: a trained magnitude per output row

    @classmethod
    def from_options(cls, **options: object) -> LoRASettings:
        """Settings from config values, where null means the default (new options default to null so that
        earlier runs keep their identity)."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    @property
    def scaling(self) -> float:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (rank-stabilised scaling)."""
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    @property
    def keeps_initial(self) -> bool:
        """Inits that move part of W into A and B: saving converts the adapter to one on the original W."""
        return self.init in ("pissa", "olora")

    def check(self, d_in: int | None = None, d_out: int | None = None) -> None:
        """Reject settings that would silently train nothing or blow up, with the fix in the message; with a
        layer's shape, also a rank it cannot hold."""
        rank = self.rank
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank!r}; use e.g. rank=8")
        if d_in is not None and rank > min(d_in, d_out):
            raise ValueError(
                f"rank={rank} exceeds min(d_in, d_out)={min(d_in, d_out)} of a {d_in}x{d_out} layer; "
                f"use rank <= {min(d_in, d_out)}"
            )
        if not (_is_number(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}; the usual choice is alpha=2*rank")
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for flag in ("use_rslora", "use_dora"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_peft(settings: LoRASettings, targets: Sequence[str] | str, modules_to_save: Sequence[str]) -> dict:
    """LoraConfig keyword arguments for these settings (what PEFT builds from and writes to a file)."""
    return {
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "use_rslora": settings.use_rslora,
        "init_lora_weights": PEFT_INIT[settings.init],
        "use_dora": settings.use_dora,
        "target_modules": targets if isinstance(targets, str) else list(targets),
        "modules_to_save": list(modules_to_save),
    }


def from_peft(config: dict) -> tuple[LoRASettings, list[str] | str, list[str]]:
    """(settings, target_modules, modules_to_save) of a PEFT adapter_config; refuses inits not replayable."""
    init = config.get("init_lora_weights", True)
    ours = {v: k for k, v in PEFT_INIT.items() if v is not True}
    if init not in (True, False) and init not in ours:
        raise ValueError(
            f"init_lora_weights={init!r} cannot be replayed here (ours: {sorted(ours)}); save the adapter "
            "from PEFT with path_initial_model_for_weight_conversion so that it loads as a plain LoRA"
        )
    settings = LoRASettings(
        rank=config["r"],
        alpha=config["lora_alpha"],
        dropout=config.get("lora_dropout") or 0.0,
        use_rslora=bool(config.get("use_rslora", False)),
        init=ours.get(init, "kaiming"),
        use_dora=bool(config.get("use_dora", False)),
    )
    return settings, config["target_modules"], list(config.get("modules_to_save") or [])
