"""Bottleneck adapters (Houlsby et al. 2019): a small MLP in series after a sublayer's output projection.

    h = W x + b  ->  h + up(relu(down(h))),   down: d -> d / reduction_factor,   up: back to d

Houlsby places one after the attention output projection and one after the feed-forward output; Pfeiffer
et al. (2020) keep only the feed-forward one. `up` starts at zero, so a fresh model computes the base. The
MLP is nonlinear and in series, so unlike LoRA or IA3 it cannot be folded into W: every forward pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lora_lab.lora.inject import Targets, check_modules_to_save, replace, resolve_targets
from lora_lab.lora.layer import linear_shape


class BottleneckAdapter(nn.Module):
    """Wraps a Linear/Conv1D; only `adapter_down` and `adapter_up` train."""

    def __init__(self, base_layer: nn.Module, reduction_factor: int) -> None:
        super().__init__()
        d_out = linear_shape(base_layer)[1]
        hidden = d_out // reduction_factor
        if hidden < 1:
            raise ValueError(
                f"reduction_factor={reduction_factor} leaves no hidden unit in a {d_out}-wide layer; "
                f"use method.reduction_factor <= {d_out}"
            )
        self.base_layer = base_layer
        weight = base_layer.weight
        kw = {"dtype": weight.dtype if weight.is_floating_point() else torch.float32, "device": weight.device}
        self.adapter_down = nn.Linear(d_out, hidden, **kw)
        self.adapter_up = nn.Linear(hidden, d_out, **kw)
        nn.init.normal_(self.adapter_down.weight, std=1e-2)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.adapter_up(torch.relu(self.adapter_down(h.to(self.adapter_down.weight.dtype)))).to(
            h.dtype
        )


def apply_bottleneck(
    model: nn.Module, after: Targets, reduction_factor: int, modules_to_save: Sequence[str] = ()
) -> nn.Module:
    """Freeze `model`, put an adapter after each linear `after` names (target forms as for LoRA), and train
    `modules_to_save` in full."""
    if not (isinstance(reduction_factor, int) and reduction_factor >= 1):
        raise ValueError(f"method.reduction_factor={reduction_factor!r} is not allowed; use an integer >= 1")
    names = resolve_targets(model, after)
    check_modules_to_save(model, names, modules_to_save)
    replace(
        model,
        {n: BottleneckAdapter(model.get_submodule(n), reduction_factor) for n in names},
        modules_to_save,
    )
    return model
