"""`python -m lora_lab.bench`: its arguments, what to measure, the report and the JSON (with provenance)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lora_lab import allocator, assets, config, models, provenance
from lora_lab.atomic import write_text_atomic
from lora_lab.bench import DESCRIPTION
from lora_lab.bench.e2e import bench_e2e
from lora_lab.bench.memory import bench_memory, memory_child
from lora_lab.bench.timing import bench_inference, bench_training
from lora_lab.build import positions_of
from lora_lab.hardware import PRECISIONS, pick_cheap_dropout, pick_device, pick_precision


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


def arguments() -> argparse.ArgumentParser:
    """The bench's options: what to build, how to measure it, and the end-to-end table."""
    parser = config.ArgumentParser(prog="python -m lora_lab.bench", description=DESCRIPTION)
    root = assets.asset_root()
    default_model = "minilm" if root and (root / "models").is_dir() else "distilbert"
    parser.add_argument("--model", default=default_model, help="a conf/model name (built from its config)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, help="override the LoRA rows' rank (default: each row's own)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["qv_r8", "attn_ffn_r8", "full"],
        help="conf/method rows to measure, each with every impl it has (e.g. dora_attn_ffn_r8 ia3 houlsby)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="as trainer.precision",
    )
    parser.add_argument(
        "--cheap-dropout",
        choices=("auto", "true", "false"),
        default="auto",
        help="as trainer.cheap_dropout (auto: on the CPU only)",
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing in every variant (less memory)"
    )
    parser.add_argument("--quant", choices=("nf4",), help="store the frozen base in 4-bit NF4 (QLoRA)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time each training step under torch.compile, beside eager",
    )
    parser.add_argument(
        "--order",
        choices=("auto", "interleaved", "sequential"),
        default="auto",
        help="interleaved: all variants built, taking turns each round (a noisy shared CPU); sequential: one "
        "variant at a time on the device (a large model on one GPU). auto: sequential on CUDA",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--memory", action="store_true", help="also measure peak memory (a process per variant)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--e2e", action="store_true", help="only the end-to-end table: our runner vs HF Trainer"
    )
    parser.add_argument("--train-size", type=int, default=512, help="with --e2e")
    parser.add_argument("--eval-size", type=int, default=512, help="with --e2e")
    parser.add_argument("--epochs", type=int, default=1, help="with --e2e")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --e2e: our sweep as this many single-threaded jobs side by side (hydra/launcher="
        "local_parallel); the baseline runs as one process either way",
    )
    parser.add_argument(
        "--against",
        metavar="COMMIT",
        help="with --e2e: the baseline is our runner at this commit (one job, torch's threads), not the HF "
        "Trainer script: what the changes since then bought",
    )
    parser.add_argument(
        "--against-precision",
        choices=PRECISIONS,
        help="with --against: the baseline's trainer.precision, where it is not ours (default: --precision)",
    )
    parser.add_argument(
        "--allocator",
        choices=("kept", "glibc"),
        default="kept",
        help="kept: freed memory stays in the process, as in the runner (lora_lab.allocator); glibc: its "
        "own thresholds (not for --e2e, whose runner always keeps it)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON file (default: outputs/bench/<model>_<device>_b<batch>_s<seq>.json, which git ignores; "
        "results/bench/ holds the committed ones, written only when named here)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    least = {"batch": 1, "seq": 2, "rank": 1, "rounds": 1, "warmup": 0, "threads": 1}
    least |= {"train_size": 1, "eval_size": 1, "epochs": 1}
    for name, low in least.items():  # before anything is built, as the runner checks its settings
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: use a whole number >= {low}")
    models.quiet_libraries()
    if args.against_precision and not args.against:
        raise SystemExit("--against-precision needs --against COMMIT (the HF Trainer script runs fp32)")
    bench_model = config.compose([f"model={args.model}", "model.pretrained=false"]).model  # as variants build
    positions = positions_of(models.load_config(bench_model))
    if positions and args.seq > positions:
        parser.error(f"--seq {args.seq}: use at most the model's {positions} positions")
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
