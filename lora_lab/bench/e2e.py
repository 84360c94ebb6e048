"""The seven-row table end to end: our runner against the HF Trainer script, or against our runner at an older
commit, on the same data, sizes and rates."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lora_lab import assets, config
from lora_lab.bench.timing import timed

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


def our_runner(results: str, jobs: int, precision: str, sizes: list[str]) -> list[str]:
    """Our side's command: the seven rows through `python -m lora_lab.run`, as `jobs` jobs side by side."""
    parallel = [*E2E_PARALLEL, f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [sys.executable, "-m", "lora_lab.run", "-m", *E2E_SWEEP, *sizes, *parallel]
    return [*command, "trainer.progress=false", f"trainer.precision={precision}", f"results_dir={results}",
            f"data.cache_dir={results}/cache"]  # fmt: skip


def hf_trainer_script(args: argparse.Namespace, root: Path, out: str) -> list[str]:
    """The baseline's command: the HF Trainer + PEFT script on imdb_cpu's data, sizes and learning rates."""
    cfg = config.compose(["experiment=imdb_cpu"])
    return [
        sys.executable,
        str(config.EXPERIMENTS_DIR / "imdb_rank_target" / "hf_trainer_baseline.py"),
        *("--model-path", str(root / "models" / "all-MiniLM-L6-v2"), "--data", str(root / "data" / "imdb")),
        *("--train-size", str(args.train_size), "--eval-size", str(args.eval_size)),
        *("--max-length", str(cfg.data.max_length), "--epochs", str(args.epochs)),
        *("--batch-size", str(cfg.trainer.batch_size), "--lora-lr", str(cfg.lora_lr)),
        *("--head-lr", str(config.compose(["method=head_only"]).method.lr)),
        *("--full-lr", str(config.compose(["method=full"]).method.lr)),
        *("--out", out),
    ]


def bench_e2e(args: argparse.Namespace) -> dict:
    """Wall time and accuracies of the seven-row table (impl=ours) through our runner and through a baseline
    on the same MiniLM, IMDB subset, epochs, batch size and learning rates: the plain HF Trainer + PEFT
    script, or (--against COMMIT) our runner as it was at that commit, one job on torch's threads."""
    root = assets.asset_root()
    if root is None or not (root / "models" / "all-MiniLM-L6-v2").is_dir():
        raise SystemExit(f"--e2e needs MiniLM and IMDB under ${assets.ENV_VAR} (e.g. ../shared)")
    sizes = [
        f"data.train_size={args.train_size}",
        f"data.eval_size={args.eval_size}",
        f"trainer.epochs={args.epochs}",
    ]
    here = str(config.CONF_DIR.parent)
    with tempfile.TemporaryDirectory() as tmp:
        ours = (our_runner(f"{tmp}/ours", args.jobs, args.precision, sizes), here)
        if args.against:
            baseline_name = f"ours@{args.against}"
            against = our_runner(f"{tmp}/against", 1, args.against_precision, sizes)
            baseline = (against, str(source_at(args.against, Path(tmp, "src"))))
        else:
            baseline_name = "hf_trainer"
            baseline = (hf_trainer_script(args, root, f"{tmp}/baseline.json"), here)
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
