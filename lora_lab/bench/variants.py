"""What the bench measures: each variant (a conf/method row with an impl, or the floor) built as the runner
builds it, its optimizer, and a fake batch of the bench's shape."""

from __future__ import annotations

import argparse
from functools import cache

import torch
from omegaconf import DictConfig
from torch import nn

from lora_lab import config, methods
from lora_lab.build import build_model
from lora_lab.train import enable_checkpointing, optimizer_for


@cache
def grad_clip() -> float:
    """The runner's default clipping, so that a step here is a step there."""
    return config.compose().trainer.grad_clip


def variant_config(args: argparse.Namespace, variant: str) -> DictConfig:
    """The run config of `variant` (see `train_variants`) on the benchmark's model."""
    impl, _, row = variant.rpartition(":")
    overrides = [f"model={args.model}", "model.pretrained=false", f"dropout={args.dropout}"]
    overrides += [f"rank={args.rank}"] if args.rank else []
    overrides += ["method=head_only"] if variant == "floor" else [f"method={row}"]
    overrides += [f"impl={impl}"] if impl else []
    cfg = config.compose(overrides)
    cfg.quant = args.quant or cfg.quant  # --quant puts every variant on an NF4 base; a QLoRA row its own
    cfg.trainer.precision, cfg.trainer.cheap_dropout = args.precision, args.cheap_dropout  # resolved in main
    cfg.data.max_length = args.seq
    return cfg


def build(args: argparse.Namespace, variant: str) -> tuple[nn.Module, methods.Method, DictConfig]:
    """A model prepared as `variant`, its method, and the run config it was built from."""
    torch.manual_seed(0)
    cfg = variant_config(args, variant)
    model = build_model(cfg, pad_token_id=0)  # decoders pool on the last non-pad token; fake batches: no 0
    if variant == "floor":  # head-only, plus gradients flowing back through the whole frozen stack
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    if args.checkpointing:  # as trainer.gradient_checkpointing does it
        enable_checkpointing(model)
    return model, methods.of(cfg), cfg


def optimizer_of(
    args: argparse.Namespace, variant: str, device: torch.device
) -> tuple[nn.Module, torch.optim.AdamW]:
    """`variant` built on `device` for training, and the runner's optimizer for it (fused on CUDA; LoRA+'s
    groups where the variant has them)."""
    model, method, cfg = build(args, variant)
    model = model.to(device).train()
    ratios = method.lr_ratios(model, cfg)
    return model, optimizer_for(model, 1e-5, 0.0, device, ratios)


def fake_batch(model: nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (args.batch, args.seq), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": torch.randint(0, 2, (args.batch,), generator=g).to(device),
    }


def train_variants(args: argparse.Namespace) -> list[str]:
    """floor, then `<impl>:<row>` for each impl of each conf/method row in --methods (the row alone where
    the method has no choice of impl). Rows a 4-bit base cannot train (full) are left out with --quant."""
    variants = ["floor"]
    for row in args.methods:
        cfg = variant_config(args, f":{row}")
        method = methods.of(cfg)
        try:
            method.check(cfg)
        except ValueError as err:
            print(f"  {row} left out: {err}")
            continue
        if type(method).inputs is not methods.Method.inputs:  # the linear probe: no step over tokens
            print(f"  {row} left out: it trains on cached features; its run records hold its cost (load_s)")
            continue
        impls = method.impls if len(method.impls) > 1 else ("",)
        variants += [f"{impl}:{row}" if impl else row for impl in impls]
    return variants
