"""What `python -m lora_lab.bench` measures once its arguments passed (cli.py): the report and the JSON, with
its provenance."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from lora_lab import allocator, models, provenance
from lora_lab.atomic import write_text_atomic
from lora_lab.bench.e2e import bench_e2e
from lora_lab.bench.memory import bench_memory, memory_child
from lora_lab.bench.timing import bench_inference, bench_training
from lora_lab.checks import positions_of
from lora_lab.hardware import pick_cheap_dropout, pick_device, pick_precision


def measure(args: argparse.Namespace, argv: list[str], bench_model: DictConfig) -> None:
    """Resolve the device-dependent arguments, measure, print the report and write the JSON."""
    models.quiet_libraries()
    positions = positions_of(models.load_config(bench_model))
    if positions and args.seq > positions:
        raise ValueError(f"--seq {args.seq}: use at most the model's {positions} positions")
    if args.allocator == "kept":
        args.allocator = "kept" if allocator.keep_freed_memory() else "glibc (no glibc, or MALLOC_* set)"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.precision = pick_precision(args.precision, device)
    args.against_precision = pick_precision(args.against_precision or args.precision, device)
    setting = {"true": True, "false": False}.get(args.cheap_dropout, "auto")
    args.cheap_dropout = pick_cheap_dropout(setting, device)
    if args.order == "auto":
        args.order = "sequential" if device.type == "cuda" else "interleaved"
    if args.memory_child:
        return memory_child(args, device)
    setup = (
        f"{args.model}{' nf4' if args.quant else ''}{' checkpointed' if args.checkpointing else ''}, "
        f"batch {args.batch} x {args.seq} tokens, r={args.rank or 'per row'}, dropout {args.dropout}, "
        f"{args.precision}, "
        f"{'cheap' if args.cheap_dropout else 'torch'} dropout masks, "
        f"{device.type}, {torch.get_num_threads()} threads, variants {args.order}, allocator {args.allocator}"
    )
    result = {"setup": setup, "args": {k: v for k, v in vars(args).items() if k != "out"}}
    result["provenance"] = {**provenance.current(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.e2e:
        result["end_to_end"] = bench_e2e(args)
    else:
        result["train_step_s"] = bench_training(args, device)
        result["inference_s"] = bench_inference(args, device)
        if args.memory:
            result.update(bench_memory(args, argv))
    print(report(result, args))
    against = ""
    if args.against:
        against = f"_vs_{args.against}"
        against += f"_{args.against_precision}" if args.against_precision != args.precision else ""
    kind = (
        f"e2e_n{args.train_size}_{args.precision}{against}"
        if args.e2e
        else f"b{args.batch}_s{args.seq}_{args.precision}{'_ckpt' if args.checkpointing else ''}"
        f"{'_nf4' if args.quant else ''}"
    )
    out = args.out or Path("outputs/bench") / f"{args.model}_{device.type}_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def report(result: dict, args: argparse.Namespace) -> str:
    if "end_to_end" in result:
        e2e = result["end_to_end"]
        name, ours = e2e["baseline"], e2e["rows"]["ours"]
        lines = [
            f"seven-row table end to end ({', '.join(e2e['sizes'])}; ours as {e2e['ours_jobs']} job(s))",
            f"  wall: ours {e2e['wall_s']['ours']:.0f} s, {name} {e2e['wall_s'][name]:.0f} s, "
            f"ratio {e2e['ours_over_baseline_wall']:.2f}",
            f"  accuracy: configuration | ours | {name}",
        ]
        for label, row in e2e["rows"][name].items():
            mine = ours.get(label, {}).get("accuracy", float("nan"))
            lines.append(f"    {label:<26} {mine:.4f}  {row['accuracy']:.4f}")
        return "\n".join(lines)
    train, lines = result["train_step_s"], []
    lines.append(f"training step, median of {args.rounds} ({result['setup']})")
    for variant, seconds in train.items():
        lines.append(f"  {variant:<28} {1000 * seconds:8.1f} ms   {seconds / train['floor']:5.2f} x floor")
    for variant in train:
        if variant.startswith("ours:") and f"peft:{variant[5:]}" in train:
            lines.append(
                f"  ours/PEFT speed on {variant[5:]}: {train['peft:' + variant[5:]] / train[variant]:.2f}"
            )
    infer = result["inference_s"]
    lines.append("inference, median")
    for variant, seconds in infer.items():
        lines.append(f"  {variant:<37} {1000 * seconds:8.1f} ms   {seconds / infer['base']:5.2f} x base")
    if "peak_memory_mb" in result:
        mem, frozen = result["peak_memory_mb"], result.get("frozen_weights_mb", {})
        lines.append("peak memory of a training step (fresh process each); frozen weights as stored")
        ref = "full" if "full" in mem else "floor"
        for variant, mb in mem.items():
            weights = f"   frozen {frozen[variant]:7.1f} MB" if variant in frozen else ""
            lines.append(f"  {variant:<28} {mb:8.0f} MB   {mb / mem[ref]:5.2f} x {ref}{weights}")
    return "\n".join(lines)
