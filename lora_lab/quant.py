"""QLoRA's base: the frozen linear layers stored in 4-bit NF4 through bitsandbytes' Linear4bit.

The same Linear4bit modules serve both impls: PEFT wraps them with its bitsandbytes LoRA layer, ours wraps
them with LoRALinear (Linear4bit is an nn.Linear). bitsandbytes >= 0.46 runs NF4 on the CPU too (slowly,
without its optional kernels), so the path is testable here; the compute dtype follows the run's precision.

On a CPU with AVX512-BF16, bitsandbytes would repack a layer's weights in place the first time it runs in eval
mode without gradients, and from then on multiply with bf16 block scales: evaluation would then compute what
training did not, differently from host to host, and a layer under 64 inputs or with outputs not a multiple of
32 would fail. We turn that path off, so that every host computes the same de-quantised product.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_lab.lora.inject import is_head


def quantize_nf4(
    model: nn.Module, double_quant: bool = False, compute_dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Replace every nn.Linear outside the output head by an NF4 Linear4bit holding the same weights,
    de-quantised to `compute_dtype` to multiply: the run's precision (train.DTYPES), so that a record saying
    fp32 computed in fp32."""
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ValueError("quant=nf4 needs bitsandbytes: pip install -e '.[qlora]'") from err
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and not is_head(model, n)]
    if not linears:
        raise ValueError(
            f"quant=nf4 found no nn.Linear to quantise in {type(model).__name__} (GPT-2's Conv1D is not)"
        )
    for name, linear in linears:
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type="nf4",
        )
        q.weight = bnb.nn.Params4bit(
            linear.weight.data.float(),
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=double_quant,
        )
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data.float(), requires_grad=False)
        q = q.to(linear.weight.device)  # bitsandbytes quantises when the weight is moved to its device
        q.support_avx512bf16_for_cpu = False  # the attribute its forward reads (see the module docstring)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q)
    model.is_loaded_in_4bit = (
        True  # as transformers marks a 4-bit model: PEFT then uses its bitsandbytes LoRA layer
    )
    return model
