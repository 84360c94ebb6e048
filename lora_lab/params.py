"""Trainable-parameter counts, and the reference table's rows computed for ours and PEFT.

    python -m lora_lab.params model=distilbert

builds each row's model from its config alone (on the meta device: shapes only, no download) and counts.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lora_lab import config, methods

if TYPE_CHECKING:
    import torch
    from torch import nn


def count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total_base): total_base counts the base model once, without what a method added (adapter
    weights, PEFT's saved copies of modules_to_save), so "trainable %" means the same for every method."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = 0
    for name, p in model.named_parameters():
        if not any(part.startswith(methods.added()) for part in name.split(".")):
            base += numel(p)
    return trainable, base


def numel(p: torch.Tensor) -> int:
    """Weights a parameter stands for: a packed 4-bit tensor holds two per byte, its true shape aside."""
    quant_state = getattr(p, "quant_state", None)
    return math.prod(quant_state.shape) if quant_state is not None else p.numel()


def frozen_bytes(model: nn.Module) -> int:
    """Bytes the weights that do not train occupy as stored: a 4-bit base counts its packed weights and
    their quantisation constants (all in its state dict), each shared tensor once."""
    training = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    seen = {}
    for tensor in model.state_dict().values():
        if tensor.data_ptr() not in training:
            seen[(tensor.data_ptr(), tensor.nbytes)] = tensor.nbytes
    return sum(seen.values())


def row_counts(overrides: Sequence[str] = ()) -> list[dict]:
    """One dict per row of the reference table (imdb_ablation's seven): label and (trainable, total_base) for
    ours and for PEFT."""
    import torch  # and transformers, in build: after the settings are checked

    from lora_lab.build import build_model

    rows = []
    for row in config.sweep_rows("imdb_ablation"):
        cfg = config.compose([*overrides, f"method={row}", "model.pretrained=false"])
        cfg.trainer.cheap_dropout, cfg.trainer.precision = False, "fp32"  # neither changes what trains
        counts = {}
        for impl in methods.IMPLS:
            cfg.impl = impl
            with torch.device("meta"):  # counting needs shapes, not values: no memory, no initialisation
                counts[impl] = count(build_model(cfg))
        rows.append({"label": methods.row_label(cfg), **counts})
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| Configuration | Trainable (ours) | % (ours) | Trainable (PEFT) | % (PEFT) |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[i][0]:,} | {100 * r[i][0] / r[i][1]:.2f}%" for i in methods.IMPLS]
        lines.append(f"| {r['label']} | {' | '.join(cells)} |")
    base = rows[0]["ours"][1]
    lines.append(f"\nBase model parameters (the % denominator): {base:,}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    overrides = sys.argv[1:] if argv is None else argv
    try:
        config.compose(list(overrides))  # a bad name or value is refused before torch loads
        from lora_lab import models

        models.quiet_libraries()
        print(format_table(row_counts(overrides)))
    except config.USER_ERRORS as err:  # e.g. model=nope: one line, exit 2, as the runner says it
        config.fail(err)


if __name__ == "__main__":
    main()
