"""`python -m lora_lab.bench`: its arguments, checked before torch is imported (measure.py does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_lab import assets, config
from lora_lab.bench import DESCRIPTION


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
        choices=config.PRECISIONS,
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
        choices=config.PRECISIONS,
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
    """The arguments, each checked against what it names (conf/model, conf/method) before torch is imported,
    so that a bad one prints its line in about a second; then the measurements."""
    parser = arguments()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    least = {"batch": 1, "seq": 2, "rank": 1, "rounds": 1, "warmup": 0, "threads": 1}
    least |= {"train_size": 1, "eval_size": 1, "epochs": 1}
    for name, low in least.items():  # before anything is built, as the runner checks its settings
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: use a whole number >= {low}")
    if args.against_precision and not args.against:
        raise SystemExit("--against-precision needs --against COMMIT (the HF Trainer script runs fp32)")
    bench_model = config.compose([f"model={args.model}", "model.pretrained=false"]).model  # as variants build
    for row in args.methods:
        config.compose([f"model={args.model}", f"method={row}"])  # an unknown row: Hydra names the known ones
    from lora_lab.bench.measure import measure  # torch and transformers: only for arguments that passed

    measure(args, argv, bench_model)
