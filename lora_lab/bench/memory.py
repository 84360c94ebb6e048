"""Peak memory of a few training steps, each variant in a fresh process, and its frozen weights' bytes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from lora_lab import params
from lora_lab.bench.variants import fake_batch, grad_clip, optimizer_of, train_variants
from lora_lab.hardware import peak_memory_mb, reset_peak_memory
from lora_lab.train import train_step


def bench_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, float]]:
    """Peak memory of a few training steps, each variant in a fresh process, and the bytes its frozen
    weights occupy as stored (what a 4-bit base saves): {"peak_memory_mb": {variant: MB},
    "frozen_weights_mb": {variant: MB}}. `argv`: the bench's own arguments, which each child repeats."""
    out: dict[str, dict[str, float]] = {"peak_memory_mb": {}, "frozen_weights_mb": {}}
    for variant in train_variants(args):
        cmd = [sys.executable, "-m", "lora_lab.bench", *argv, "--memory-child", variant]
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        for key, mb in json.loads(child.stdout.strip().splitlines()[-1]).items():
            out[key][variant] = mb
    return out


def memory_child(args: argparse.Namespace, device: torch.device) -> None:
    model, optimizer = optimizer_of(args, args.memory_child, device)
    batch = fake_batch(model, args, device)
    reset_peak_memory(device)
    for _ in range(3):
        train_step(model, batch, optimizer, grad_clip(), device, args.precision)
    frozen = params.frozen_bytes(model) / 2**20
    print(json.dumps({"peak_memory_mb": peak_memory_mb(device), "frozen_weights_mb": frozen}))
