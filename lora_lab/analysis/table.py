"""The ablation table: one row per configuration and impl, its accuracy over seeds with a 95% CI, the
reference beside it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lora_lab import methods
from lora_lab.analysis import stats
from lora_lab.analysis.runs import NO_IMPL
from lora_lab.atomic import write_text_atomic
from lora_lab.config import CONF_DIR, EXPERIMENTS_DIR, compose

TARGET_ORDER = {"qv": 0, "attn": 1, "attn_ffn": 2}
IMPL_ORDER = {"ours": 0, "peft": 1, NO_IMPL: 2}


def load_reference(experiment: str, path: str | Path | None = None) -> pd.DataFrame | None:
    """The paper's numbers for a study: experiments/<study>/reference.csv, where the experiment is
    named <study>/<variant>. None when the study has no reference."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"--reference {path}: no such file; give a reference CSV, or leave it out")
    path = Path(path) if path else EXPERIMENTS_DIR / experiment.split("/")[0] / "reference.csv"
    return pd.read_csv(path) if path.is_file() else None


def summarize(
    runs: pd.DataFrame, correct: dict[str, pd.DataFrame] | None = None, reference: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per configuration (seeds aggregated): accuracy in percent with a 95% CI that counts seed and
    test-set variance together (stats.Crossed, on `correct` from runs.correctness); with one seed, test-set
    noise only; without predictions (wandb), seed variance only. Each row says which, and which seeds
    collapsed."""
    correct = correct or {}
    rows = []
    host = cost_host(runs)
    kinds = list(methods.METHODS)  # the registry's order: head-only first, full last
    for config_id, group in runs.groupby("config_id", sort=False):
        first = group.iloc[0]
        acc = 100 * group["accuracy"]
        mean, low, high, method = acc.mean(), math.nan, math.nan, "one run, no predictions"
        if config_id in correct:
            fit = stats.Crossed.fit(correct[config_id].to_numpy())
            mean = 100 * fit.mean
            low, high = (100 * v for v in fit.interval(stats.LEVEL))
            method = (
                "1 seed: test-set noise only"
                if fit.seeds == 1
                else f"seeds + test examples, t on {fit.se_df()[1]:.1f} df"
            )
        elif len(acc) >= 2:
            low, high = stats.t_interval(acc.to_numpy())
            method = f"seeds only (no predictions), t on {len(acc) - 1} df"
        if not (low >= 0 and high <= 100) and not math.isnan(low):
            low, high = max(low, 0.0), min(high, 100.0)
            method += "; cut at 0/100: too few seeds for a normal interval"
        rows.append(
            {
                "configuration": first["configuration"],
                "impl": first["impl"],
                "config_id": config_id,
                "trainable_params": int(first["trainable_params"]),
                "trainable_pct": float(first["trainable_pct"]),
                "accuracy": mean,
                "ci_low": low,
                "ci_high": high,
                "ci_method": method,
                "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                "n": len(acc),
                "collapsed_seeds": tuple(group.loc[group["collapsed"].notna(), "seed"]),
                "label": first["label"],
                "lr": first["lr"],
                **cost(group[group["machine"] == host] if host else group.iloc[:0]),
                "_order": (
                    kinds.index(first["method"]) if first["method"] in kinds else len(kinds),
                    TARGET_ORDER.get(first["targets"], 3) if isinstance(first["targets"], str) else 3,
                    first["rank"] if pd.notna(first["rank"]) else 0,
                    first["label"],  # a variant (DoRA, PiSSA...) after its plain row, both impls together
                    IMPL_ORDER.get(first["impl"], 3),
                    first["configuration"],
                ),
            }
        )
    rows.sort(key=lambda row: row["_order"])
    table = pd.DataFrame(rows).drop(columns="_order")
    if reference is not None:
        ref = reference.set_index("Configuration")["Accuracy"]
        table["reference_accuracy"] = table["label"].map(ref)
        table["delta_pp"] = table["accuracy"] - table["reference_accuracy"]
    return table.reset_index(drop=True)


COSTS = {"train_s": "train_wall_s", "score_s": "eval_wall_s", "peak_memory_mb": "peak_memory_mb"}


def cost_host(runs: pd.DataFrame) -> str | None:
    """The machine kind most of the study's runs ran on: costs are compared on it alone, since the same run
    takes another time on another host."""
    machines = runs["machine"].dropna() if "machine" in runs else pd.Series(dtype=str)
    return None if machines.empty else machines.value_counts().sort_index().idxmax()


def cost(runs: pd.DataFrame) -> dict[str, float]:
    """A row's cost over its seeds on one host: mean and sd of training time, scoring time and peak memory,
    and how many runs carry them (records from before a field existed lack it)."""
    out: dict[str, float] = {
        "cost_n": int(runs["train_wall_s"].notna().sum()) if "train_wall_s" in runs else 0
    }
    for name, field in COSTS.items():
        values = runs[field].dropna() if field in runs else pd.Series(dtype=float)
        out[name] = values.mean() if len(values) else float("nan")
        out[f"{name}_sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    return out


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:.0f}" + ("" if pd.isna(sd) else f" ± {sd:.0f}")


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a reader sees it: thousands separators, percentages, the CI and how it was made."""
    out = pd.DataFrame(
        {
            "Configuration": table["configuration"],
            "Impl": table["impl"],
            "Trainable Params": table["trainable_params"].map("{:,}".format),
            "Trainable %": table["trainable_pct"].map("{:.2f}%".format),
            "Accuracy": table["accuracy"].map("{:.2f}%".format),
            "95% CI (seeds + test examples)": [
                "" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]"
                for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
            ],
            "CI from": table["ci_method"],
            "n": table["n"],
            "Collapsed": [
                f"{len(c)} of {n}" for c, n in zip(table["collapsed_seeds"], table["n"], strict=True)
            ],
            "Train / score s (mean ± sd)": [
                f"{_mean_sd(r.train_s, r.train_s_sd)} / {_mean_sd(r.score_s, r.score_s_sd)}"
                for r in table.itertuples(index=False)
            ],
        }
    )
    if "reference_accuracy" in table:
        out["Reference Accuracy"] = table["reference_accuracy"].map(
            lambda v: "" if pd.isna(v) else f"{v:.2f}%"
        )
        out["Δ (pp)"] = table["delta_pp"].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    return out


def to_markdown(table: pd.DataFrame) -> str:
    shown = _formatted(table)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    shown = _formatted(table)

    def tex(value: object) -> str:
        return (
            str(value).replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
        )

    lines = [
        r"\begin{tabular}{ll" + "r" * (len(shown.columns) - 2) + "}",
        r"\toprule",
        " & ".join(tex(c) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex(v) for v in row) + r" \\" for row in shown.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def read_bench(path: str | Path) -> dict:
    """A `python -m lora_lab.bench` JSON for --latency; anything else is refused in one line naming it."""
    usage = f"--latency {path}"
    try:
        bench = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{usage}: no such file; give a bench JSON, or leave it out") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{usage}: not JSON ({err}); give a `python -m lora_lab.bench` JSON") from None
    if not isinstance(bench, dict) or "inference_s" not in bench:
        raise ValueError(f"{usage}: no inference timings; give a `python -m lora_lab.bench` JSON")
    return bench


def add_latency(
    table: pd.DataFrame, runs: pd.DataFrame, bench: dict, source: str = "--latency"
) -> pd.DataFrame:
    """The table with `latency_x_base`: each row's inference time over the base model's, from a
    `python -m lora_lab.bench` JSON (merged where the bench merged the method, else unmerged). A variant
    `<impl>:<conf/method row>` meets the runs of that row and impl, both read from the records (a variant
    without impl: any impl). Rows the bench did not measure get NaN. A variant that names no conf/method row
    (a bench older than today's row names) is refused, saying which commit wrote the file."""
    infer, rank = bench["inference_s"], bench.get("args", {}).get("rank")
    measured = {}
    for key, seconds in infer.items():
        variant, _, how = key.rpartition(" ")  # "<variant> merged" / "<variant> unmerged", or "base"
        if key == "base" or (how == "unmerged" and f"{variant} merged" in infer):
            continue
        impl, _, row = variant.rpartition(":")
        if not (CONF_DIR / "method" / f"{row}.yaml").is_file():
            commit = bench.get("provenance", {}).get("git_commit")
            writer = f"commit {commit[:8]}" if commit else "a bench from before its files named their commit"
            raise ValueError(
                f"{source}: variant {row!r} is no conf/method row today (the file was written by {writer}); "
                "rerun `python -m lora_lab.bench --methods ROWS` for a current one"
            )
        cfg = compose([f"method={row}", *([f"rank={rank}"] if rank else [])])
        measured[(methods.of(cfg).row(cfg), impl or None)] = seconds / infer["base"]
    rows = runs.groupby("config_id")[["row", "impl"]].first()
    ratios = {
        config_id: measured.get((r.row, r.impl), measured.get((r.row, None)))
        for config_id, r in rows.iterrows()
    }
    return table.assign(latency_x_base=table["config_id"].map(ratios).astype(float))


def write_tables(table: pd.DataFrame, out: str | Path, notes: Sequence[str] = ()) -> list[Path]:
    """table.md (with `notes` below it: what was read, which runs failed), table.csv and table.tex."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_text_atomic(out / "table.md", to_markdown(table) + "".join(f"\n{n}\n" for n in notes)),
        write_text_atomic(out / "table.csv", table.to_csv(index=False, float_format="%.4f")),
        write_text_atomic(out / "table.tex", to_latex(table) + "".join(f"% {n}\n" for n in notes)),
    ]
