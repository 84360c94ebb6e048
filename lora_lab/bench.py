"""Speed and memory of fine-tuning methods (ours and PEFT's) beside the floor, measured side by side.

    python -m lora_lab.bench                                   # MiniLM (assets) or DistilBERT, CPU, 16 x 128
    python -m lora_lab.bench --methods attn_ffn_r8 dora_attn_ffn_r8 ia3 houlsby pfeiffer prompt_tuning
    python -m lora_lab.bench --model distilbert --seq 256 --memory

The floor is what any LoRA step must pay: the frozen base's forward plus the input-gradient half of its
backward (embedding output requires grad, only the classifier trains). Step times are medians over rounds in
which every variant takes one step in turn, so machine noise hits all variants alike. Peak memory is measured
in a fresh subprocess per variant (CUDA: max allocated; CPU: peak RSS of that process). Inference latency is
measured for the base and each variant, unmerged and, where the method merges, merged.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lora_lab import allocator, assets, config, methods, models, params, provenance
from lora_lab.atomic import write_text_atomic
from lora_lab.build import build_model, positions_of
from lora_lab.hardware import (
    PRECISIONS,
    autocast,
    peak_memory_mb,
    pick_cheap_dropout,
    pick_device,
    pick_precision,
    reset_peak_memory,
)
from lora_lab.train import enable_checkpointing, optimizer_for, train_step

GRAD_CLIP = config.compose().trainer.grad_clip  # the runner's default, so a step here is a step there


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


def build(args: argparse.Namespace, variant: str) -> tuple[nn.Module, methods.Method]:
    """A model prepared as `variant`, and its method."""
    torch.manual_seed(0)
    cfg = variant_config(args, variant)
    model = build_model(cfg, pad_token_id=0)  # decoders pool on the last non-pad token; fake batches: no 0
    if variant == "floor":  # head-only, plus gradients flowing back through the whole frozen stack
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    if args.checkpointing:  # as trainer.gradient_checkpointing does it
        enable_checkpointing(model)
    return model, methods.of(cfg)


def optimizer_of(
    args: argparse.Namespace, variant: str, device: torch.device
) -> tuple[nn.Module, torch.optim.AdamW]:
    """`variant` built on `device` for training, and the runner's optimizer for it (fused on CUDA; LoRA+'s
    groups where the variant has them)."""
    model, method = build(args, variant)
    model = model.to(device).train()
    ratios = method.lr_ratios(model, variant_config(args, variant))
    return model, optimizer_for(model, 1e-5, 0.0, device, ratios)


def fake_batch(model: nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (args.batch, args.seq), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": torch.randint(0, 2, (args.batch,), generator=g).to(device),
    }


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    builders: dict[str, Callable[[], Callable[[], object] | None]],
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
        times = {name: [] for name in jobs}
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


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    def step_of(variant: str, compiled: bool = False) -> Callable[[], object]:
        model, optimizer = optimizer_of(args, variant, device)
        batch = fake_batch(model, args, device)
        step_model = torch.compile(model) if compiled else model  # compiled on its first (warm-up) step
        return lambda: train_step(step_model, batch, optimizer, GRAD_CLIP, device, args.precision)

    builders = {}
    for variant in train_variants(args):
        builders[variant] = lambda v=variant: step_of(v)
        if args.compile:
            builders[f"{variant} compiled"] = lambda v=variant: step_of(v, compiled=True)
    return measure(builders, args.rounds, args.warmup, device, args.order)


def bench_inference(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Forward latency of the base and of every variant, unmerged and, where the method folds into the
    base weights (LoRA, DoRA, IA3; not a 4-bit base), merged."""

    def forward_of(variant: str, merged: bool = False) -> Callable[[], object] | None:
        model, method = build(args, variant)
        if merged and (variant_config(args, variant).quant or method.merge(model) is None):
            return None
        model = model.to(device).eval()
        batch = {k: v for k, v in fake_batch(model, args, device).items() if k != "labels"}

        def infer() -> None:
            with torch.inference_mode(), autocast(device, args.precision):
                model(**batch)

        return infer

    builders = {"base": lambda: forward_of("floor")}
    for variant in train_variants(args)[1:]:
        builders[f"{variant} unmerged"] = lambda v=variant: forward_of(v)
        builders[f"{variant} merged"] = lambda v=variant: forward_of(v, merged=True)
    return measure(builders, args.rounds, args.warmup, device, args.order)


def bench_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict[str, float]]:
    """Peak memory of a few training steps, each variant in a fresh process, and the bytes its frozen
    weights occupy as stored (what a 4-bit base saves): {"peak_memory_mb": {variant: MB},
    "frozen_weights_mb": {variant: MB}}. `argv`: the bench's own arguments, which each child repeats."""
    out = {"peak_memory_mb": {}, "frozen_weights_mb": {}}
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
        train_step(model, batch, optimizer, GRAD_CLIP, device, args.precision)
    frozen = params.frozen_bytes(model) / 2**20
    print(json.dumps({"peak_memory_mb": peak_memory_mb(device), "frozen_weights_mb": frozen}))


# Our side of --e2e: imdb_cpu's seven rows, ours, seed 0: the seven runs the baseline script makes.
E2E_SWEEP = ["experiment=imdb_cpu", "hydra.sweeper.params.impl=ours", "hydra.sweeper.params.seed=0"]
E2E_PARALLEL = ["hydra/launcher=local_parallel", "trainer.num_threads=1"]  # --jobs: single-threaded jobs


def source_at(commit: str, dest: Path) -> Path:
    """This repository's files at `commit`, written under `dest`: the runner as it was, for --against."""
    repo = config.CONF_DIR.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True)
    if archive.returncode != 0:
        raise ValueError(f"--against {commit}: not a commit of {repo} ({archive.stderr.decode().strip()})")
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def row_times(results: Path) -> dict[str, dict]:
    """Accuracy and the load / train / score seconds of each record under `results`, by row label."""
    keys = ("accuracy", "load_s", "train_wall_s", "eval_wall_s")
    records = [json.loads(p.read_text()) for p in results.glob("**/runs/*.json")]
    return {r["label"]: {k: r.get(k) for k in keys} for r in records}


def bench_e2e(args: argparse.Namespace) -> dict:
    """Wall time and accuracies of the seven-row table (impl=ours) through our runner and through a baseline
    on the same MiniLM, IMDB subset, epochs, batch size and learning rates: the plain HF Trainer + PEFT
    script, or (--against COMMIT) our runner as it was at that commit, one job on torch's threads."""
    root = assets.asset_root()
    if root is None or not (root / "models" / "all-MiniLM-L6-v2").is_dir():
        raise SystemExit(f"--e2e needs MiniLM and IMDB under ${assets.ENV_VAR} (e.g. ../shared)")
    cfg = config.compose(["experiment=imdb_cpu"])
    sizes = [
        f"data.train_size={args.train_size}",
        f"data.eval_size={args.eval_size}",
        f"trainer.epochs={args.epochs}",
    ]
    here = str(config.CONF_DIR.parent)
    with tempfile.TemporaryDirectory() as tmp:

        def runner(results: str, jobs: int, precision: str) -> list[str]:
            return [
                sys.executable,
                "-m",
                "lora_lab.run",
                "-m",
                *E2E_SWEEP,
                *sizes,
                *(E2E_PARALLEL + [f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []),
                "trainer.progress=false",
                f"trainer.precision={precision}",
                f"results_dir={results}",
                f"data.cache_dir={results}/cache",
            ]

        ours = (runner(f"{tmp}/ours", args.jobs, args.precision), here)
        if args.against:
            baseline_name = f"ours@{args.against}"
            baseline = (
                runner(f"{tmp}/against", 1, args.against_precision),
                str(source_at(args.against, Path(tmp, "src"))),
            )
        else:
            baseline_name = "hf_trainer"
            script = [
                sys.executable,
                str(config.EXPERIMENTS_DIR / "imdb_rank_target" / "hf_trainer_baseline.py"),
                "--model-path",
                str(root / "models" / "all-MiniLM-L6-v2"),
                "--data",
                str(root / "data" / "imdb"),
                "--train-size",
                str(args.train_size),
                "--eval-size",
                str(args.eval_size),
                "--max-length",
                str(cfg.data.max_length),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(cfg.trainer.batch_size),
                "--lora-lr",
                str(cfg.lora_lr),
                "--head-lr",
                str(config.compose(["method=head_only"]).method.lr),
                "--full-lr",
                str(config.compose(["method=full"]).method.lr),
                "--out",
                f"{tmp}/baseline.json",
            ]
            baseline = (script, here)
        walls = {}
        for name, (cmd, path) in (("ours", ours), (baseline_name, baseline)):
            env = {**os.environ, "PYTHONPATH": path}
            walls[name] = timed(
                lambda c=cmd, e=env: subprocess.run(c, cwd=tmp, env=e, check=True, capture_output=True),
                torch.device("cpu"),
            )
            print(f"  {name}: {walls[name]:.0f} s", flush=True)
        rows = {"ours": row_times(Path(tmp, "ours"))}
        if args.against:
            rows[baseline_name] = row_times(Path(tmp, "against"))
        else:
            baseline_rows = json.loads(Path(tmp, "baseline.json").read_text())["rows"]
            rows[baseline_name] = {r["label"]: {"accuracy": r["accuracy"]} for r in baseline_rows}
    return {
        "ours_jobs": args.jobs,
        "baseline": baseline_name,
        "precision": {
            "ours": args.precision,
            baseline_name: args.against_precision if args.against else "fp32",
        },
        "wall_s": walls,
        "ours_over_baseline_wall": walls["ours"] / walls[baseline_name],
        "rows": rows,
        "sizes": sizes,
    }


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


def main(argv: list[str] | None = None) -> None:
    parser = config.ArgumentParser(prog="python -m lora_lab.bench", description=__doc__.split("\n\n")[0])
    default_model = (
        "minilm" if assets.asset_root() and (assets.asset_root() / "models").is_dir() else "distilbert"
    )
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


if __name__ == "__main__":
    try:
        main()
    except config.USER_ERRORS as err:  # e.g. --model nope: one line, exit 2, as the runner says it
        config.fail(err)
