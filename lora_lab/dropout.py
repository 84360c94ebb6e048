"""Dropout with cheap random masks, for the LoRA inputs and for the model's own dropout layers.

torch's CPU `bernoulli_` spends one generator call per element, which made the base model's own dropout a
large share of a MiniLM training step; cutting each 64-bit `random_()` word into four 15-bit numbers is
several times cheaper per element (the measurements: README, Performance). The masks come from torch's
generator, so `torch.manual_seed` reproduces them and checkpointing replays them. The price: p is rounded to a
multiple of 2**-15 (0.1 becomes 0.100006), and the 1/(1-p) rescaling uses that rounded p.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

MASK_BITS = 15  # each random 64-bit word yields four 15-bit draws (random_() leaves its top bit 0)
ATTENTION = "lora_lab_sdpa"


def effective_dropout(p: float) -> float:
    """The dropout rate `keep_mask` realises: p rounded to a multiple of 2**-15."""
    return round(p * 2**MASK_BITS) / 2**MASK_BITS


def keep_scale(p: float) -> float:
    """1 / (1 - p) for the rate `keep_mask` realises: what kept values are multiplied by."""
    return 1 / (1 - effective_dropout(p))


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool mask, True with probability 1 - effective_dropout(p), from torch's generator."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    words &= 0x7FFF_7FFF_7FFF_7FFF  # four uniform 15-bit numbers per word
    return words.view(torch.int16)[:n].view(shape) >= round(p * 2**MASK_BITS)


def apply_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of x with a `keep_mask`. The mask multiplies as uint8 (faster on CPU than a bool
    mask), and autograd keeps that 1-byte mask for backward."""
    keep = keep_mask(x.shape, p, x.device).view(torch.uint8)
    return (x * keep).mul_(keep_scale(p))


class Dropout(nn.Dropout):
    """nn.Dropout drawing its mask with `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return apply_dropout(x, self.p)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for bidirectional attention with dropout (BERT-style encoders in
    training): SDPA on CPU then falls back to a math path with `bernoulli_`; here the same math draws its
    attention-probability mask with `keep_mask`."""
    decoder_like = getattr(module, "is_causal", False) or getattr(module, "num_key_value_groups", 1) > 1
    if dropout == 0 or decoder_like:  # causal or grouped-query attention: SDPA handles those
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    # The scales go on the (seq x head_dim) sides, not on the (seq x seq) scores.
    scores = (query * (query.shape[-1] ** -0.5 if scaling is None else scaling)) @ key.transpose(-2, -1)
    if attention_mask is not None:  # SDPA's mask: bool (True = attend) or additive
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = scores.softmax(-1)
    kept = probs * keep_mask(probs.shape, dropout, probs.device).view(torch.uint8)
    out = (kept @ value).mul_(keep_scale(dropout))
    return out.transpose(1, 2).contiguous(), None


def install(model: nn.Module) -> nn.Module:
    """Swap every nn.Dropout for `Dropout` and SDPA attention for `attention`, in place. Worth it on the
    CPU, where the masks were measured; `trainer.cheap_dropout` decides (train.pick_cheap_dropout)."""
    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p))
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(ATTENTION)
    return model
