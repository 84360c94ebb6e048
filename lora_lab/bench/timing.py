"""Step and forward times, variants taking turns each round (or one at a time on a GPU), medians."""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from lora_lab.bench.variants import build, fake_batch, grad_clip, optimizer_of, train_variants
from lora_lab.hardware import autocast
from lora_lab.train import train_step


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


Builder = Callable[[], Callable[[], object] | None]  # makes a variant's job (None: nothing to time)


def measure(
    builders: dict[str, Builder],
    rounds: int,
    warmup: int,
    device: torch.device,
    order: str,
) -> dict[str, float]:
    """Median seconds per call of each job; `builders` make the jobs (each holding its model), or None where
    there is none to measure (a method that cannot merge).

    interleaved: every job is built first, then they take turns within every round, so the noise of a shared
    CPU hits them alike. sequential: one job is built, measured and freed before the next is built, so only
    one model is on the device at a time (a 1B-parameter model's variants on one GPU)."""
    if order == "interleaved":
        jobs = {name: job for name, build_job in builders.items() if (job := build_job()) is not None}
        for job in jobs.values():
            for _ in range(warmup):
                job()
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(rounds):
            for name, job in jobs.items():
                times[name].append(timed(job, device))
        return {name: statistics.median(t) for name, t in times.items()}
    medians = {}
    for name, build_job in builders.items():
        job = build_job()
        if job is None:
            continue
        for _ in range(warmup):
            job()
        medians[name] = statistics.median(timed(job, device) for _ in range(rounds))
        del job
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return medians


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    def step_of(variant: str, compiled: bool = False) -> Callable[[], object]:
        model, optimizer = optimizer_of(args, variant, device)
        batch = fake_batch(model, args, device)
        step_model = torch.compile(model) if compiled else model  # compiled on its first (warm-up) step
        return lambda: train_step(step_model, batch, optimizer, grad_clip(), device, args.precision)

    builders: dict[str, Builder] = {}
    for variant in train_variants(args):
        builders[variant] = partial(step_of, variant)
        if args.compile:
            builders[f"{variant} compiled"] = partial(step_of, variant, compiled=True)
    return measure(builders, args.rounds, args.warmup, device, args.order)


def bench_inference(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Forward latency of the base and of every variant, unmerged and, where the method folds into the
    base weights (LoRA, DoRA, IA3; not a 4-bit base), merged."""

    def forward_of(variant: str, merged: bool = False) -> Callable[[], object] | None:
        model, method, cfg = build(args, variant)
        if merged and (cfg.quant or method.merge(model) is None):
            return None
        model = model.to(device).eval()
        batch = {k: v for k, v in fake_batch(model, args, device).items() if k != "labels"}

        def infer() -> None:
            with torch.inference_mode(), autocast(device, args.precision):
                model(**batch)

        return infer

    builders: dict[str, Builder] = {"base": partial(forward_of, "floor")}
    for variant in train_variants(args)[1:]:
        builders[f"{variant} unmerged"] = partial(forward_of, variant)
        builders[f"{variant} merged"] = partial(forward_of, variant, merged=True)
    return measure(builders, args.rounds, args.warmup, device, args.order)
