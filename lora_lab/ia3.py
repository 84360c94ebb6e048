"""(IA)^3 (Liu et al. 2022): a learned vector rescales a few activations; nothing else trains but the head.

    attention keys and values:   y = l * (W x + b)       (l per output feature)
    feed-forward output layer:   y = W (l * x) + b       (l per input feature: the FFN's inner activations)

l starts at one, so a fresh model computes the base. Both forms fold into W (and b), so a merged model costs
what the base costs. Layout, initialisation and merge follow PEFT's IA3, so the two can be compared weight
for weight (PEFT stores l as (d_out, 1) or (1, d_in) and calls it `ia3_l`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lora_lab.lora.inject import Targets, check_modules_to_save, replace, resolve_targets
from lora_lab.lora.layer import linear_shape


class IA3Linear(nn.Module):
    """Wraps a Linear/Conv1D; only `ia3_l` trains."""

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__()
        d_in, d_out = linear_shape(base_layer)
        self.base_layer = base_layer
        self.feedforward = feedforward
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # GPT-2's Conv1D: weight is (d_in, d_out)
        weight = base_layer.weight
        self.ia3_l = nn.Parameter(
            torch.ones(d_in if feedforward else d_out, dtype=weight.dtype, device=weight.device)
        )
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.feedforward:
            return self.base_layer(x * self.ia3_l)
        return self.base_layer(x) * self.ia3_l

    def _weight_scale(self) -> torch.Tensor:
        """l shaped to multiply the base weight: its rows (outputs) or columns (inputs) in its layout."""
        along_inputs = self.feedforward != self.fan_in_fan_out
        return self.ia3_l[None, :] if along_inputs else self.ia3_l[:, None]

    @torch.no_grad()
    def merge(self) -> None:
        if not self.base_layer.weight.is_floating_point():
            raise ValueError("cannot merge into a 4-bit base; load onto the 16-bit base and merge there")
        if not self.merged:
            self.base_layer.weight.mul_(self._weight_scale())
            if not self.feedforward and self.base_layer.bias is not None:
                self.base_layer.bias.mul_(self.ia3_l)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.div_(self._weight_scale())
            if not self.feedforward and self.base_layer.bias is not None:
                self.base_layer.bias.div_(self.ia3_l)
            self.merged = False


def apply_ia3(
    model: nn.Module, targets: Targets, feedforward: Targets, modules_to_save: Sequence[str] = ()
) -> nn.Module:
    """Freeze `model`, wrap the `targets` in IA3Linear (those also matched by `feedforward` scale their
    input), and train `modules_to_save` in full. Target forms as for LoRA (suffix list or regex)."""
    names = resolve_targets(model, targets)
    ff = set(resolve_targets(model, feedforward))
    if not ff <= set(names):
        raise ValueError(f"feed-forward modules {sorted(ff - set(names))[:3]} are not among the IA3 targets")
    check_modules_to_save(model, names, modules_to_save)
    replace(model, {n: IA3Linear(model.get_submodule(n), n in ff) for n in names}, modules_to_save)
    return model


def ia3_layers(model: nn.Module) -> Iterator[IA3Linear]:
    return (m for m in model.modules() if isinstance(m, IA3Linear))
