"""The LoRA layer: a frozen linear map plus a trainable low-rank update.

    y = W0 x + b + s * B A dropout(x),   s = alpha / r   (or alpha / sqrt(r) with rsLoRA)

A is (r, d_in), B is (d_out, r). B starts at zero, so a freshly wrapped model computes exactly what the
base model computed. The shapes and initialisation follow PEFT's defaults so that adapters can be moved
between the two implementations unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_lab.dropout import keep_mask, keep_scale

INITS = ("kaiming", "gaussian")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a transformers Conv1D (GPT-2 stores its weight as (d_in, d_out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    raise TypeError(f"LoRA wraps nn.Linear or Conv1D, not {type(module).__name__}")


class LoRALinear(nn.Module):
    """Wraps a Linear/Conv1D; only `lora_A` and `lora_B` are meant to train."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        d_in, d_out = linear_shape(base_layer)
        check_hyperparameters(rank, alpha, dropout, d_in, d_out, init)
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.rank, self.dropout = rank, dropout
        self.set_scaling(alpha, use_rslora)
        weight = base_layer.weight
        self.quantized = not weight.is_floating_point()  # a 4-bit base (QLoRA): adapters train in fp32
        dtype = torch.float32 if self.quantized else weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=dtype, device=weight.device))
        if init == "kaiming":  # PEFT's default: what nn.Linear would do for a (r, d_in) weight
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A, std=1 / rank)
        self.merged = False
        self.enabled = True

    def set_scaling(self, alpha: float, use_rslora: bool) -> None:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA (rank-stabilised scaling)."""
        self.alpha, self.use_rslora = alpha, use_rslora
        self.scaling = alpha / math.sqrt(self.rank) if use_rslora else alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or not self.enabled:
            return y
        # The dtype the down-projection runs in: autocast's (cast once here, so that masking and the saved
        # input are in bf16 too), else the adapter's (fp32 adapters on a 4-bit or 16-bit base).
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.lora_A.dtype
        h = x.reshape(-1, x.shape[-1]).to(dtype)
        if self.training and self.dropout > 0:
            keep = keep_mask(h.shape, self.dropout, h.device)
            down = DropoutDown.apply(h, keep, self.lora_A, keep_scale(self.dropout))
        else:
            down = h @ self.lora_A.T
        # y += s * (down B^T), in place: the base output is not needed for its own backward.
        y2d = y.view(-1, y.shape[-1])
        y2d.addmm_(down.to(y.dtype), self.lora_B.T.to(y.dtype), alpha=self.scaling)
        return y

    def delta_weight(self) -> torch.Tensor:
        """s * B A laid out like the base weight, computed in fp32 for an accurate merge."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into W0 (in W0's dtype): inference then costs what the base costs."""
        if self.quantized:
            raise ValueError(
                "cannot merge into a 4-bit base; load the adapter onto the 16-bit base and merge there"
            )
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}, scaling={self.scaling:g}"


class DropoutDown(torch.autograd.Function):
    """dropout(x) @ A^T that saves x and a 1-byte mask instead of the masked copy of x.

    Plain dropout keeps one float copy of x per adapted module (q, k and v each copy the same x); here, in
    fp32, the modules share x, which autograd keeps once (under autocast each keeps its own bf16 cast, half
    the bytes), and the masked input is rebuilt in backward. The 1/(1-p) scale is applied on the rank-r
    side. The mask multiplies as uint8, faster on CPU than a bool mask or `where`. Backward runs in the
    gradient's dtype, so that it works under bf16 autocast, where the forward matmul ran in bf16.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, lora_a: torch.Tensor, scale: float) -> torch.Tensor:
        keep = keep.view(torch.uint8)
        ctx.save_for_backward(x, keep, lora_a)
        ctx.scale = scale
        return ((x * keep) @ lora_a.T).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, keep, lora_a = ctx.saved_tensors
        grad = grad * ctx.scale  # (N, r): cheap to scale here
        grad_x = (grad @ lora_a.to(grad.dtype)) * keep if ctx.needs_input_grad[0] else None
        grad_a = grad.T @ (x * keep).to(grad.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_a, None


def check_hyperparameters(rank: int, alpha: float, dropout: float, d_in: int, d_out: int, init: str) -> None:
    """Reject settings that would silently train nothing or blow up, with the fix in the message."""
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}; use e.g. rank=8")
    if rank > min(d_in, d_out):
        raise ValueError(
            f"rank={rank} exceeds min(d_in, d_out)={min(d_in, d_out)} of a {d_in}x{d_out} layer; "
            f"use rank <= {min(d_in, d_out)}"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}; the usual choice is alpha=2*rank")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
