"""Replicate committed runs with today's code and environment, and say how far each moved.

    python -m lora_lab.replicate results/imdb_rank_target/cpu_minilm --runs 2     # the two cheapest rows
    python -m lora_lab.replicate STUDY --names head_only-none-seed0-1a2b3c4d --out results/<study>/replication

Each run is rerun from its record's resolved config, through the runner's own stages, into a scratch folder
that is deleted after: the committed records are only read. A run whose data or weights fingerprints differ
from what it would read now is refused (the comparison would mean nothing). Each rerun is compared with its
record: predictions bit for bit, or the share of examples on which they agree; accuracy; the loss curve. The
verdict is `identical` (the same predictions and probabilities, bit for bit), `within noise` (accuracy within
twice the row's seed-to-seed spread, and the rerun agreeing with its record at least as often as it agrees
with the row's other seeds), or `drifted`. The report names both environments.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from lora_lab import config, models, provenance, recipe, run, store
from lora_lab.atomic import write_text_atomic
from lora_lab.config import USER_ERRORS


def records_of(study: Path) -> list[dict]:
    runs = study / "runs" if (study / "runs").is_dir() else study
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    complete = [r for r in records if r.get("status") == "complete" and r.get("predictions")]
    if not complete:
        raise FileNotFoundError(f"{study}: no complete run records with predictions to replicate")
    return complete


def choose(records: list[dict], names: list[str], count: int) -> list[dict]:
    """The runs named, or `count` runs of different rows, the cheapest first (load + train + score)."""
    if names:
        by_name = {r["name"]: r for r in records}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"--names: no complete record named {unknown[0]!r} in the study")
        return [by_name[n] for n in names]
    cheapest: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r.get("load_s") or 0) + (r.get("wall_s") or 0)):
        cheapest.setdefault(r["config_id"], r)
    return list(cheapest.values())[:count]


def config_of(record: dict, scratch: Path, overrides: list[str]) -> object:
    """The record's resolved config over today's defaults (keys added since take their defaults, which
    leave a run as it was), pointed at `scratch`, with `overrides` on top (a planted change). Where files are
    found (outside a run's identity, and written in an older form by older records) is today's."""
    base = config.compose([f"model={_model_preset(record)}"])
    OmegaConf.set_struct(base, False)
    cfg = OmegaConf.merge(base, OmegaConf.create(record["config"]))
    for key in WHERE_FILES_ARE:
        parent = key.rpartition(".")[0]
        if OmegaConf.select(base, parent) is not None and OmegaConf.select(cfg, parent) is not None:
            OmegaConf.update(cfg, key, OmegaConf.select(base, key), merge=False)
    cfg.results_dir, cfg.force = str(scratch), True
    cfg.trainer.progress, cfg.trainer.save_adapter, cfg.logger.wandb = False, False, False
    for override in overrides:
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value else None)
    return cfg


WHERE_FILES_ARE = ("data.local", "data.cache_dir", "model.local", "model.tokenizer.local")


def _model_preset(record: dict) -> str:
    """The conf/model file whose model the record ran (its local-copy settings are today's)."""
    for path in sorted((config.CONF_DIR / "model").glob("*.yaml")):
        if OmegaConf.load(path).get("name") == record["config"]["model"]["name"]:
            return path.stem
    name = record["config"]["model"]["name"]
    raise ValueError(f"{record['name']}: no conf/model file names model {name!r}")


def rerun(record: dict, scratch: Path, overrides: list[str]) -> tuple[dict, pd.DataFrame]:
    """The run again, stage by stage; refused when its data or weights are not the ones it ran on."""
    job = recipe.setup(config_of(record, scratch, overrides))
    assert job is not None, "force=true: the rerun always runs"
    changed = store.changed_inputs(record, job.inputs)
    if changed:
        key = next(iter(changed))
        raise ValueError(
            f"{record['name']}: its {key} fingerprint differs from what it would read now; replicate "
            f"needs the {key} it ran on (LORA_LAB_ASSETS, data.source)"
        )
    prepared = recipe.prepare(job)
    predictions = recipe.train_and_score(job, prepared)
    recipe.persist(job, prepared, predictions)
    if predictions is None:
        raise ValueError(f"{record['name']}: the rerun failed ({prepared.record.get('reason')})")
    return prepared.record, predictions


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    joined = a.merge(b, on="example_id", suffixes=("_a", "_b"))
    return float((joined["pred_a"] == joined["pred_b"]).mean())


def seed_spread(
    study: Path, records: list[dict], record: dict, rerun: pd.DataFrame
) -> tuple[float | None, float | None]:
    """The row's seed-to-seed sd of accuracy, and the lowest agreement between the rerun and the row's other
    seeds: how far two seeds' predictions differ, measured without the record under test (None with one
    seed)."""
    same = [r for r in records if r["config_id"] == record["config_id"]]
    others = [r for r in same if r["name"] != record["name"]]
    if not others:
        return None, None
    lowest = min(agreement(rerun, pd.read_parquet(_predictions_path(study, r))) for r in others)
    return float(np.std([r["accuracy"] for r in same], ddof=1)), lowest


def _predictions_path(study: Path, record: dict) -> Path:
    runs = study / "runs" if (study / "runs").is_dir() else study
    return runs / record["predictions"]["file"]


def compare(study: Path, records: list[dict], record: dict, again: dict, preds: pd.DataFrame) -> dict:
    before = pd.read_parquet(_predictions_path(study, record))
    joined = before.merge(preds, on="example_id", suffixes=("_record", "_rerun"))
    identical = len(joined) == len(before) and all(
        np.array_equal(joined[f"{c}_record"].to_numpy(), joined[f"{c}_rerun"].to_numpy())
        for c in ("pred", "prob_pos")
    )
    agree = float((joined["pred_record"] == joined["pred_rerun"]).mean())
    sd, lowest = seed_spread(study, records, record, preds)
    n = len(before)
    noise = 2 * max(sd or 0.0, math.sqrt(max(record["accuracy"] * (1 - record["accuracy"]), 1e-12) / n))
    delta = again["accuracy"] - record["accuracy"]
    within = abs(delta) <= noise and (lowest is None or agree >= lowest)
    curves = [record.get("train_loss_curve") or [], again.get("train_loss_curve") or []]
    loss = max((abs(a - b) for a, b in zip(*curves, strict=False)), default=None)
    return {
        "name": record["name"],
        "label": record["label"],
        "verdict": "identical" if identical else "within noise" if within else "drifted",
        "accuracy_record": record["accuracy"],
        "accuracy_rerun": again["accuracy"],
        "accuracy_delta_pp": 100 * delta,
        "noise_pp": 100 * noise,
        "predictions_agree": agree,
        "seeds_agree_at_least": lowest,
        "loss_curve_max_abs_diff": loss,
        "environment_record": {k: record.get(k) for k in ("git_commit", "versions", "precision", "machine")},
        "environment_rerun": {**provenance.current(), "precision": again.get("precision")},
        "device_rerun": again["config"]["trainer"]["device"],
    }


def to_markdown(study: Path, results: list[dict], command: str) -> str:
    lines = [
        f"# Replication of `{study}`\n",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: each run rerun from its record with today's "
        "code and environment, into a scratch folder (the records were only read).\n",
        "| Run | Row | Verdict | Accuracy (record -> rerun) | Δ pp (noise ±) | Predictions agree | "
        "Seeds agree at least | Loss curve, largest difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        seeds = "" if r["seeds_agree_at_least"] is None else f"{r['seeds_agree_at_least']:.4f}"
        loss = "" if r["loss_curve_max_abs_diff"] is None else f"{r['loss_curve_max_abs_diff']:.2e}"
        lines.append(
            f"| {r['name']} | {r['label']} | {r['verdict']} | {100 * r['accuracy_record']:.2f} -> "
            f"{100 * r['accuracy_rerun']:.2f} | {r['accuracy_delta_pp']:+.2f} ({r['noise_pp']:.2f}) | "
            f"{r['predictions_agree']:.4f} | {seeds} | {loss} |"
        )
    lines.append("\nEnvironments (record, then rerun):\n")
    for r in results:
        lines.append(f"- {r['name']}: {json.dumps(r['environment_record'], sort_keys=True)}")
        lines.append(
            f"  rerun: {json.dumps(r['environment_rerun'], sort_keys=True)}, device {r['device_rerun']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = config.ArgumentParser(prog="python -m lora_lab.replicate", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study's results folder (holding runs/)")
    parser.add_argument("overrides", nargs="*", help="settings changed in every rerun (a planted change)")
    parser.add_argument("--runs", type=int, default=2, help="how many rows, the cheapest first (default 2)")
    parser.add_argument("--names", nargs="+", default=[], help="runs by name instead")
    parser.add_argument("--out", type=Path, help="report folder (default outputs/replicate/<study>)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: use a whole number >= 1")
    out = args.out or Path("outputs/replicate") / args.study.name
    models.quiet_libraries()
    try:
        records = records_of(args.study)
        chosen = choose(records, args.names, args.runs)
        results = []
        with tempfile.TemporaryDirectory() as scratch:
            for record in chosen:
                print(f"[lora-lab replicate] {record['name']}: rerunning", flush=True)
                again, preds = rerun(record, Path(scratch), args.overrides)
                results.append(compare(args.study, records, record, again, preds))
                print(f"[lora-lab replicate] {record['name']}: {results[-1]['verdict']}", flush=True)
    except (*USER_ERRORS, OSError) as err:
        run.refuse(err)
    command = "python -m lora_lab.replicate " + " ".join(argv)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "replication.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_text_atomic(out / "replication.md", to_markdown(args.study, results, command))
    print(to_markdown(args.study, results, command))
    print(f"wrote {out / 'replication.md'}, {out / 'replication.json'}")


if __name__ == "__main__":
    main()
