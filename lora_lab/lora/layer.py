"""The LoRA layer: a frozen linear map plus a trainable low-rank update, and DoRA, its variant.

    LoRA:  y = W x + b + s B A dropout(x),                     s = alpha / r (or alpha / sqrt(r), rsLoRA)
    DoRA:  y = m / ||W + s B A||  * (W x + s B A dropout(x)) + b   (norm per output row, detached)

A is (r, d_in), B is (d_out, r). The shapes, key names and initialisations follow PEFT's, so adapters move
between the two implementations unchanged. A variant that computes something new subclasses LoRALinear,
overrides `add_update` (and `merge`/`unmerge` if it changes the merged weight; `tensor_shapes` and
`adapter_tensors` if it adds tensors), and is named by its option's `layer` in settings.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_lab.dropout import keep_mask, keep_scale
from lora_lab.lora.settings import RANDOM_INITS, LoRASettings, layer_path


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a transformers Conv1D (GPT-2 stores its weight as (d_in, d_out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    raise TypeError(f"LoRA wraps nn.Linear or Conv1D, not {type(module).__name__}")


def random_a(shape: torch.Size, init: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh (r, d_in) A in fp32: kaiming-uniform (PEFT's default: what nn.Linear does for that weight)
    or gaussian with std 1/r."""
    a = torch.empty(shape)
    if init == "kaiming":
        return nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    return nn.init.normal_(a, std=1 / shape[0], generator=generator)


def is_quantized(module: nn.Module) -> bool:
    return not module.weight.is_floating_point()


def layer_class(settings: LoRASettings) -> type[LoRALinear]:
    """The layer that runs these settings: the one a variant's declaration names, else LoRALinear."""
    path = settings.layer()
    return layer_path(path) if path else LoRALinear


class LoRALinear(nn.Module):
    """Wraps a Linear/Conv1D; only the adapter's parameters (`lora_A`, `lora_B`, ...) are meant to train."""

    def __init__(self, base_layer: nn.Module, settings: LoRASettings) -> None:
        super().__init__()
        self.check(base_layer, settings)
        d_in, d_out = linear_shape(base_layer)
        self.base_layer = base_layer
        self.settings = settings
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        self.quantized = is_quantized(base_layer)  # a 4-bit base (QLoRA): adapters train in fp32
        dtype = torch.float32 if self.quantized else weight.dtype
        r = settings.rank
        self.lora_A = nn.Parameter(torch.empty(r, d_in, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=dtype, device=weight.device))
        self.merged = False
        self.enabled = True
        self.cheap_dropout = True  # lora_lab.dropout masks (measured faster on CPU); False: torch's dropout
        self.reset_parameters()

    @staticmethod
    def check(base_layer: nn.Module, settings: LoRASettings) -> None:
        """Whether `settings` fit `base_layer`; apply_lora checks every layer before it changes any."""
        settings.check(*linear_shape(base_layer))
        if is_quantized(base_layer) and settings.keeps_initial:
            raise ValueError(
                f"init={settings.init} rewrites the base weight and needs a 16/32-bit base; "
                "initialise on the full-precision model and quantise the residual afterwards"
            )

    @classmethod
    def tensor_shapes(cls, settings: LoRASettings, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        """The adapter's tensors by their PEFT key suffix, and shapes: what an adapter file must hold."""
        return {"lora_A.weight": (settings.rank, d_in), "lora_B.weight": (d_out, settings.rank)}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by PEFT key suffix (see `tensor_shapes`)."""
        return {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}

    @property
    def scaling(self) -> float:
        return self.settings.scaling

    def base_weight(self) -> torch.Tensor:
        """W as (d_out, d_in) in fp32, de-quantised from a 4-bit base."""
        weight = self.base_layer.weight
        if self.quantized:
            import bitsandbytes.functional as bnbf  # only a 4-bit base needs it

            return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
        weight = weight.float()
        return weight.T if self.fan_in_fan_out else weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise A and B by `settings.init`: kaiming or gaussian (`random_a`), B = 0.

        pissa: B A = the top-r singular part of W (sqrt(S / s) on each side); olora: B = the first r columns
        of Q and A = the first r rows of R in W = Q R. For these two, W becomes the residual W - s B A (the
        model still computes what it did), and A0, B0 are kept to convert the adapter to one on the
        original W."""
        init = self.settings.init
        if init in RANDOM_INITS:
            self.lora_A.copy_(random_a(self.lora_A.shape, init))
            self.lora_B.zero_()
            return
        weight, r, s = self.base_weight(), self.settings.rank, self.scaling
        if init == "pissa":
            u, sv, vh = torch.linalg.svd(weight, full_matrices=False)
            root = (sv[:r] / s).sqrt()
            a, b = root[:, None] * vh[:r], u[:, :r] * root
        else:  # olora
            q, rr = torch.linalg.qr(weight)
            a, b = rr[:r], q[:, :r]
        self.lora_A.copy_(a)
        self.lora_B.copy_(b)
        residual = weight - s * (b @ a)
        base = self.base_layer.weight
        base.copy_((residual.T if self.fan_in_fan_out else residual).to(base.dtype))
        self.register_buffer("initial_A", self.lora_A.detach().clone(), persistent=False)
        self.register_buffer("initial_B", self.lora_B.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or not self.enabled:
            return y
        return self.add_update(x, y)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """dropout(x) A^T as (tokens, r), in autocast's dtype when on (cast once here, so that masking and
        the saved input are in bf16 too), else the adapter's (fp32 adapters on a 4-bit or 16-bit base)."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.lora_A.dtype
        h = x.reshape(-1, x.shape[-1]).to(dtype)
        p = self.settings.dropout
        if self.training and p > 0:
            if not self.cheap_dropout:
                return nn.functional.dropout(h, p, training=True) @ self.lora_A.T
            return DropoutDown.apply(h, keep_mask(h.shape, p, h.device), self.lora_A, keep_scale(p))
        return h @ self.lora_A.T

    def add_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y + s B A dropout(x), added into y in place (y is not needed for the base's own backward), unless
        y is a view autograd forbids writing to (a 4-bit base's matmul can return one): then a new tensor."""
        down = self.down(x)
        if y._is_view():
            update = down.to(y.dtype) @ self.lora_B.T.to(y.dtype)
            return y + self.scaling * update.view(y.shape)
        y.view(-1, y.shape[-1]).addmm_(down.to(y.dtype), self.lora_B.T.to(y.dtype), alpha=self.scaling)
        return y

    def delta_weight(self) -> torch.Tensor:
        """s * B A laid out like the base weight, computed in fp32 for an accurate merge."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def _check_mergeable(self) -> None:
        if self.quantized:
            raise ValueError(
                "cannot merge into a 4-bit base; load the adapter onto the 16-bit base and merge there"
            )

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into W (in W's dtype): inference then costs what the base costs."""
        self._check_mergeable()
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
        s = self.settings
        return f"rank={s.rank}, alpha={s.alpha}, dropout={s.dropout}, scaling={self.scaling:g}, init={s.init}"


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024): LoRA's direction update with a trained magnitude m per output row.

    m starts at the row norms of W + s B A, so a fresh layer computes the base. The norm is detached, as
    the paper suggests (section 4.3) and PEFT does. Dropout acts on the low-rank branch only, as in LoRA:
    PEFT (like the paper's code) also multiplies W by the dropped-out input, one more full-size matmul per
    layer; the two agree exactly without dropout and at evaluation."""

    @classmethod
    def tensor_shapes(cls, settings: LoRASettings, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        return {**super().tensor_shapes(settings, d_in, d_out), "lora_magnitude_vector": (d_out,)}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().adapter_tensors(), "lora_magnitude_vector": self.lora_magnitude}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """LoRA's init, then m = ||W + s B A|| per row (created here on the first call)."""
        super().reset_parameters()
        norm = self.row_norm().to(self.lora_A.dtype)
        if hasattr(self, "lora_magnitude"):
            self.lora_magnitude.copy_(norm)
        else:
            self.lora_magnitude = nn.Parameter(norm)

    def row_norm(self) -> torch.Tensor:
        """||W + s B A|| per output row, in fp32 and without gradient."""
        with torch.no_grad():
            return (self.base_weight() + self.scaling * (self.lora_B.float() @ self.lora_A.float())).norm(
                dim=1
            )

    def add_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """m / ||W + s B A|| * (y - b + s B A dropout(x)) + b, the bracket built in y's own memory (as LoRA's
        update is; the base's backward does not need y): three passes over the output, not six."""
        factor = (self.lora_magnitude / self.row_norm().to(self.lora_magnitude.dtype)).to(y.dtype)
        bias = self.base_layer.bias
        if bias is not None:
            y.sub_(bias)
        y = super().add_update(x, y)
        return y * factor if bias is None else torch.addcmul(bias.to(y.dtype), y, factor)

    def _factor(self, norm: torch.Tensor) -> torch.Tensor:
        """m / norm shaped to scale the base weight's output rows."""
        factor = self.lora_magnitude.float() / norm
        return factor[None, :] if self.fan_in_fan_out else factor[:, None]

    @torch.no_grad()
    def merge(self) -> None:
        """W <- m / ||W + s B A|| * (W + s B A); the norm is kept to undo it exactly."""
        self._check_mergeable()
        if not self.merged:
            weight = self.base_layer.weight
            self.merged_norm = self.row_norm()
            weight.copy_(
                (self._factor(self.merged_norm) * (weight.float() + self.delta_weight())).to(weight.dtype)
            )
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight.copy_(
                (weight.float() / self._factor(self.merged_norm) - self.delta_weight()).to(weight.dtype)
            )
            self.merged = False


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
