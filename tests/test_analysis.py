"""The analysis: configurations kept apart by their id, seeds aggregated with CIs, claims checked with known
effects, p-values against hand computations, files regenerated exactly, labels that never overlap, the
notebook executed, errors on empty or mixed folders."""

from __future__ import annotations

import json
import re
import runpy
import sys
import zlib
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import ASSETS, REPO, requires_assets
from helpers import in_process, run_module
from matplotlib.text import Text
from nbclient import NotebookClient

from lora_lab import analysis, identity, schema, store
from lora_lab.analysis import claims as claims_module
from lora_lab.analysis import findings, rates, stats
from lora_lab.analysis import runs as runs_module
from lora_lab.analysis.plot import pareto_front, plot
from lora_lab.analysis.table import add_latency, read_bench
from lora_lab.config import CONF_DIR

matplotlib.use("Agg")
N = 400  # test examples of the synthetic stores
ROWS = {  # label: (method, targets, rank)
    "Classification Head Only": ("head_only", None, None),
    "Q+V (r=4)": ("lora", "qv", 4),
    "Q+V (r=8)": ("lora", "qv", 8),
    "Full Fine-Tuning": ("full", None, None),
}


def synthetic(folder: Path, label: str, impl: str | None, seed: int, accuracy: float, **config) -> None:
    """A record and its predictions: the first `accuracy` share of the N examples correct, then (`shuffle`) a
    shuffle of which ones, seeded by row and seed, so that two runs of one accuracy disagree on examples."""
    method, targets, rank = ROWS[label]
    cfg = {"method": {"kind": method, "targets": targets}, "rank": rank, "impl": impl, "seed": seed, **config}
    record = schema.Record(
        name=f"{label}-{impl}-{seed}-{identity.digest(config)}",
        experiment="imdb_rank_target/test",
        label=label,
        method=method,
        seed=seed,
        model="m",
        config=cfg,
        status="complete",
        targets=targets,
        rank=rank,
        impl=impl if method == "lora" else None,
        trainable_params={"head_only": 10, "lora": 100 * (rank or 1), "full": 10_000}[method],
        trainable_pct=1.0,
        train_examples=10,
        eval_examples=N,
    )
    correct = np.zeros(N, dtype=int)
    correct[: round(accuracy * N)] = 1
    shuffle = np.random.default_rng([seed, zlib.crc32(label.encode())])  # each row and seed its own
    correct = shuffle.permutation(correct) if "shuffle" in config else correct
    labels = np.arange(N) % 2
    path = folder / "runs" / f"{record.name}.json"
    frame = pd.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(N)],
            "label": labels,
            "pred": np.where(correct, labels, 1 - labels),
        }
    )
    record.predictions = store.write_predictions(path, frame.assign(prob_pos=0.5))
    record.accuracy = float(correct.mean())
    store.write(path, record)


def analysed(folder: Path) -> tuple[pd.DataFrame, dict]:
    runs = analysis.load_runs(folder)
    correct = analysis.correctness(runs)
    return analysis.summarize(runs, correct, analysis.load_reference(runs["experiment"].iloc[0])), correct


def test_seeds_give_a_crossed_interval_and_one_seed_test_noise_only(tmp_path) -> None:
    for seed, acc in enumerate((0.90, 0.92, 0.91)):
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, acc)  # the same examples hard for every seed
    synthetic(tmp_path, "Q+V (r=8)", "peft", 0, 0.85)
    table, _ = analysed(tmp_path)
    ours = table[table["impl"] == "ours"].iloc[0]
    seeds_only = stats.t_interval(np.array([90.0, 92.0, 91.0]))
    assert (ours["n"], ours["accuracy"]) == (3, pytest.approx(91.0))
    assert ours["ci_method"].startswith("seeds + test examples, t on ")
    # test-set noise widens the interval beyond the seeds' own spread, on the seeds' 2 degrees of freedom
    assert ours["ci_low"] < seeds_only[0] and ours["ci_high"] > seeds_only[1]
    assert float(ours["ci_method"].split("t on ")[1].split()[0]) == 2
    peft = table[table["impl"] == "peft"].iloc[0]
    se = 100 * np.sqrt(0.85 * 0.15 / (N - 1))  # one seed: the binomial interval of its N examples
    assert peft["ci_method"] == "1 seed: test-set noise only"
    assert (peft["ci_low"], peft["ci_high"]) == (
        pytest.approx(85 - 1.966 * se, abs=0.05),
        pytest.approx(85 + 1.966 * se, abs=0.05),
    )
    assert ours["reference_accuracy"] == 92.48
    assert "| Q+V (r=8) | ours | 800 | 1.00% | 91.00% | [" in analysis.table.to_markdown(table)
    assert "| 95% CI (seeds + test examples) |" in analysis.table.to_markdown(table)


def test_an_interval_stops_at_the_ends_of_the_accuracy_scale(tmp_path) -> None:
    for seed, acc in enumerate((1.0, 1.0, 0.6)):  # one seed far below two perfect ones
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, acc)
    row = analysed(tmp_path)[0].iloc[0]
    assert row["ci_high"] == 100.0 and row["ci_low"] > 0
    assert row["ci_method"].endswith("cut at 0/100: too few seeds for a normal interval")
    assert row["collapsed_seeds"] == ()  # 60% of 400 is above chance, and both classes are predicted


def test_configurations_differing_in_one_setting_stay_apart(tmp_path) -> None:
    synthetic(tmp_path, "Q+V (r=8)", "ours", 0, 0.90, lora_lr=1e-3)
    synthetic(tmp_path, "Q+V (r=8)", "ours", 1, 0.91, lora_lr=1e-3)
    synthetic(tmp_path, "Q+V (r=8)", "ours", 0, 0.80, lora_lr=1e-4)
    table, _ = analysed(tmp_path)
    assert sorted(zip(table["configuration"], table["n"], strict=True)) == [
        ("Q+V (r=8), lora_lr=0.0001", 1),
        ("Q+V (r=8), lora_lr=0.001", 2),
    ]


def test_ours_and_peft_at_one_setting_share_a_name_beside_ours_at_another(tmp_path) -> None:
    """A study that adds a tuned-rate row of ours keeps its ours = PEFT pairs at the first rate."""
    for seed in (0, 1):
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, 0.90, lora_lr=1e-3)
        synthetic(tmp_path, "Q+V (r=8)", "peft", seed, 0.90, lora_lr=1e-3)
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, 0.80, lora_lr=3e-3)
    table, correct = analysed(tmp_path)
    assert sorted(zip(table["configuration"], table["impl"], strict=True)) == [
        ("Q+V (r=8), lora_lr=0.001", "ours"),
        ("Q+V (r=8), lora_lr=0.001", "peft"),
        ("Q+V (r=8), lora_lr=0.003", "ours"),
    ]
    [pair] = findings.check(
        [claims_module.parse({"impls_equivalent": {"margin_pp": 1.0}})], table, correct
    ).itertuples()
    assert pair.a == pair.b == "Q+V (r=8), lora_lr=0.001"


def test_empty_mixed_and_corrupt_folders_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no run records"):
        analysis.load_runs(tmp_path)
    synthetic(tmp_path, "Q+V (r=8)", "ours", 0, 0.9)
    other = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    (tmp_path / "runs" / "other.json").write_text(json.dumps({**other, "name": "other", "model": "other"}))
    with pytest.raises(ValueError, match="mixes runs of different models"):
        analysis.load_runs(tmp_path)
    (tmp_path / "runs" / "other.json").write_text("{trunc")
    with pytest.raises(
        ValueError, match=r"other.json is not a valid run record .*rerun that run with force=true"
    ):
        analysis.load_runs(tmp_path)


def test_missing_or_broken_inputs_are_named_with_the_fix(tmp_path) -> None:
    synthetic(tmp_path, "Q+V (r=8)", "ours", 0, 0.9)
    with pytest.raises(FileNotFoundError, match="--reference nowhere.csv: no such file"):
        analysis.load_reference("x", "nowhere.csv")
    with pytest.raises(FileNotFoundError, match="--claims nowhere.yaml: no such file"):
        claims_module.load_claims("x", "nowhere.yaml")
    broken = tmp_path / "claims.yaml"
    broken.write_text("claims: [unclosed")
    with pytest.raises(ValueError, match="claims.yaml is not a claims file"):
        claims_module.load_claims("x", broken)
    next((tmp_path / "runs").glob("*.parquet")).unlink()
    with pytest.raises(
        FileNotFoundError, match="is missing: its record names it; rerun that run with force=true"
    ):
        analysis.correctness(analysis.load_runs(tmp_path))


def test_a_dev_split_pilot_picks_each_rows_best_rate_a_step_below_any_collapse() -> None:
    table = pd.DataFrame(
        {
            "label": ["LoRA"] * 3 + ["DoRA"] * 2 + ["PiSSA"] + ["LoRA+"] * 4,
            "impl": ["ours"] * 10,
            "lr": [1e-4, 1e-3, 3e-4, 1e-3, 3e-3, 1e-3, 1e-4, 3e-4, 1e-3, 3e-3],
            "accuracy": [70.0, 75.0, 78.0, 60.0, 71.0, 74.0, 72.0, 76.0, 79.0, 50.0],
            "collapsed_seeds": [()] * 9 + [(1,)],
            "ci_low": 0.0,
            "ci_high": 100.0,
            "n": 1,
        }
    )
    chosen = rates.choose(table)
    picked = chosen[chosen["chosen"]].set_index("label")
    assert picked.loc["LoRA", "lr"] == 3e-4 and not picked.loc["LoRA", "edge"]  # interior of 1e-4..1e-3
    assert picked.loc["DoRA", "lr"] == 3e-3 and picked.loc["DoRA", "edge"]  # the grid's top: widen it
    # LoRA+: 1e-3 did best, but the next rate up collapsed, so the margin keeps one step below it
    assert picked.loc["LoRA+", "lr"] == 3e-4
    text = rates.to_markdown(chosen)
    assert "| DoRA | ours | 0.003 | 71.00% | [0.00, 100.00] | 1 | **chosen**: at the grid's edge" in text
    assert (
        "| PiSSA | ours | 0.001 | 74.00% | [0.00, 100.00] | 1 | one rate run so far: no choice yet |" in text
    )
    assert "| 1e-03 |" not in text  # rates print as %g
    assert "| 0.001 | 79.00% | [0.00, 100.00] | 1 | passed over: the next rate up collapsed |" in text
    assert "| LoRA+ | ours | 0.003 | 50.00% | [0.00, 100.00] | 1 | collapsed (1 of 1) |" in text


def claims_table(tmp_path: Path, accuracies: dict[str, float]) -> pd.DataFrame:
    for label, acc in accuracies.items():
        for seed in (0, 1, 2):
            synthetic(tmp_path, label, "ours", seed, acc + 0.005 * seed, shuffle=True)
    table, correct = analysed(tmp_path)
    claims = [
        {"statement": "large", "better": {"a": "Q+V (r=8)", "b": "Classification Head Only"}},
        {"statement": "reversed", "better": {"a": "Classification Head Only", "b": "Q+V (r=8)"}},
        {"statement": "tiny", "better": {"a": "Q+V (r=4)", "b": "Q+V (r=8)"}},
        {"statement": "same", "equivalent": {"a": "Q+V (r=4)", "b": "Q+V (r=8)", "margin_pp": 20.0}},
        {"statement": "apart", "equivalent": {"a": "Q+V (r=8)", "b": "Full Fine-Tuning", "margin_pp": 1.0}},
    ]
    return findings.check([claims_module.parse(c) for c in claims], table, correct).set_index("claim")


def test_claims_with_known_effects_get_their_verdicts(tmp_path) -> None:
    accuracies = {
        "Classification Head Only": 0.60,
        "Q+V (r=4)": 0.905,
        "Q+V (r=8)": 0.90,
        "Full Fine-Tuning": 0.70,
    }
    result = claims_table(tmp_path, accuracies)
    assert result.loc["large", "verdict"] == "holds" and result.loc["large", "diff_pp"] == pytest.approx(30.0)
    assert result.loc["reversed", "verdict"] == "contradicted"
    assert result.loc["tiny", "verdict"] == "inconclusive"
    assert "seeds at 400 test examples" in result.loc["tiny", "to_decide"]
    assert result.loc["same", "verdict"] == "holds"  # 0.5 pp apart, inside 20 pp (3 seeds: 2 df)
    assert result.loc["apart", "verdict"] == "contradicted"  # 20 pp apart, outside 1 pp
    assert (result["p_adjusted"] >= result["p"]).all() and set(result["claims_in_family"]) == {5}
    assert result["ci_level"].iloc[0] == pytest.approx(1 - 0.1 / 5)
    again = claims_table(tmp_path / "again", accuracies)  # a fresh store, the same numbers to the last digit
    pd.testing.assert_frame_equal(result, again)


def test_point_labels_never_overlap(tmp_path) -> None:
    # Seven points, several nearly on top of each other (as the seven rows are on a small model).
    table = pd.DataFrame(
        {
            "configuration": [f"Configuration number {i} (r=8)" for i in range(7)],
            "impl": ["ours"] * 7,
            "trainable_params": [1_000, 50_000, 52_000, 54_000, 90_000, 200_000, 200_000],
            "accuracy": [80.0, 85.0, 85.1, 85.2, 85.3, 85.25, 85.15],
            "ci_low": [79.0] + [84.5] * 6,
            "ci_high": [81.0] + [86.0] * 6,
        }
    )
    fig = analysis.plot(table)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]  # the words, not the lines
    assert len(boxes) == 7
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.slow
def test_wandb_source_reads_the_same_fields(tmp_path, monkeypatch) -> None:
    """What tracking.log_record puts in wandb (a record's scalar fields as the summary, its config as the
    config) reads back as the store's own frame of those records. The wandb server is out of reach here, so
    reachability, login and the API are stood in for."""
    import wandb

    from lora_lab import tracking

    for seed, acc in enumerate((0.90, 0.92)):
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, acc)
    synthetic(tmp_path, "Full Fine-Tuning", None, 0, 0.95)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]

    class Run:
        def __init__(self, record: dict) -> None:
            summary = type("Summary", (dict,), {"update": dict.update})()
            tracking.log_record(
                type("Logged", (), {"summary": summary, "log": lambda *a, **k: None})(), record, 1
            )
            self.summary, self.config = summary, record["config"]

    class Api:
        def runs(self, path: str) -> list[Run]:
            assert path == "me/lora-lab"
            return [Run(r) for r in records]

    monkeypatch.setattr(runs_module, "unreachable", lambda url: None)
    monkeypatch.setattr(wandb, "login", lambda **kw: True)
    monkeypatch.setattr(wandb, "Api", Api)
    from_wandb = runs_module.load_wandb_runs("me", "lora-lab")
    from_store = analysis.load_runs(tmp_path)
    columns = ["name", "label", "impl", "seed", "accuracy", "trainable_params", "config_id", "configuration"]
    pd.testing.assert_frame_equal(
        from_wandb[columns].sort_values("name").reset_index(drop=True),
        from_store[columns].sort_values("name").reset_index(drop=True),
    )
    table = analysis.summarize(from_wandb)
    assert list(table["accuracy"]) == [pytest.approx(91.0), pytest.approx(95.0)]
    assert table["ci_method"].iloc[0].startswith("seeds only (no predictions), t on 1 df")


@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> Path:
    """A small results folder made by the real runner: two rows, LoRA with both impls, two seeds."""
    if not ASSETS.is_dir():
        pytest.skip(f"shared assets not found at {ASSETS}")
    root = tmp_path_factory.mktemp("analysis")
    sweep = ["-m", "model=tiny_bert", "method=head_only,qv_r8", "impl=ours,peft", "seed=0,1"]
    sizes = ["data.train_size=32", "data.eval_size=48", "data.max_length=32", "trainer.epochs=1"]
    args = [*sweep, *sizes, "trainer.progress=false", "experiment_name=imdb_rank_target/tiny"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert in_process(root, root / "cache", monkeypatch, args) == 0
    (root / "results" / "claims.yaml").write_text(
        "claims:\n"
        "  - better: {a: 'Q+V (r=8)', b: 'Classification Head Only'}\n"
        "  - impls_equivalent: {margin_pp: 1.0}\n"
    )
    return root / "results" / "imdb_rank_target" / "tiny"


OUTPUTS = (
    "table.md",
    "table.csv",
    "table.tex",
    "acc_vs_params.png",
    "acc_vs_params.pdf",
    "findings.md",
    "findings.csv",
    "findings.png",
)


@pytest.mark.slow
@requires_assets
def test_cli_writes_and_regenerates_identical_files(real_results, monkeypatch, capsys) -> None:
    """`python -m lora_lab.analysis FOLDER --claims FILE` run twice in this process (the same entry point)."""
    args = [str(real_results), "--claims", str(real_results.parents[1] / "claims.yaml")]
    assert run_module("lora_lab.analysis", args, monkeypatch) == 0
    first = capsys.readouterr().out
    assert "| Q+V (r=8) | peft |" in first and "| Classification Head Only | — |" in first
    assert "Q+V (r=8): ours = PEFT within 1 pp" in first
    before = {name: (real_results / name).read_bytes() for name in OUTPUTS}
    assert run_module("lora_lab.analysis", args, monkeypatch) == 0
    assert {name: (real_results / name).read_bytes() for name in OUTPUTS} == before


@pytest.mark.slow
@requires_assets
def test_each_record_accuracy_is_its_predictions_accuracy(real_results) -> None:
    records = sorted((real_results / "runs").glob("*.json"))
    assert len(records) == 6
    for path in records:
        record = json.loads(path.read_text())
        preds = pd.read_parquet(path.parent / record["predictions"]["file"])
        assert len(preds) == 48 and preds["example_id"].is_unique
        assert record["accuracy"] == pytest.approx((preds["pred"] == preds["label"]).mean())
    ids = {
        tuple(pd.read_parquet(p.with_suffix("").with_suffix(".preds.parquet"))["example_id"]) for p in records
    }
    assert len(ids) == 1  # every seed scored on the same reviews, in the same order


@pytest.mark.slow
@requires_assets
def test_notebook_executes_on_a_results_folder(real_results, monkeypatch) -> None:
    notebook = nbformat.read(REPO / "notebooks" / "ablation.ipynb", as_version=4)
    monkeypatch.setenv("LORA_LAB_RESULTS", str(real_results))
    monkeypatch.setenv("LORA_LAB_CLAIMS", str(real_results.parents[1] / "claims.yaml"))
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "Q+V (r=8)" in text and "92.48%" in text  # our row with the reference accuracy beside it
    assert "ours = PEFT within 1 pp" in text  # the findings
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2


def test_latency_joins_bench_variants_to_rows_merged_where_measured(tmp_path) -> None:
    runs = pd.DataFrame(
        {
            "config_id": ["a", "b", "c", "d"],
            "row": ["qv_r8", "qv_r8", "houlsby_rf16", "attn_r8"],  # as runs.frame reads them from configs
            "impl": ["ours", "peft", "ours", "ours"],
        }
    )
    bench = {
        "args": {"rank": None},
        "inference_s": {
            "base": 2.0,
            "ours:qv_r8 unmerged": 3.0,
            "ours:qv_r8 merged": 2.2,
            "peft:qv_r8 unmerged": 2.6,
            "houlsby unmerged": 2.4,
        },
    }
    table = add_latency(pd.DataFrame({"config_id": ["a", "b", "c", "d"]}), runs, bench)
    assert table["latency_x_base"].tolist()[:3] == pytest.approx([1.1, 1.3, 1.2])
    assert pd.isna(table["latency_x_base"].iloc[3])  # not benchmarked: left out of the latency plot
    table = table.assign(
        accuracy=[80.0, 81.0, 79.0, 82.0], ci_low=78.0, ci_high=83.0, impl=["ours", "peft", "ours", "ours"]
    )
    table["configuration"] = ["Q+V", "Q+V", "Houlsby", "Attn"]
    fig = plot(table, tmp_path, x="latency_x_base")
    assert (tmp_path / "acc_vs_latency.png").is_file()
    assert len(fig.axes[0].texts) == 2  # labels for the two configurations measured


# What the analysis refuses rather than pools (issue #38): each case exits 0 with a wrong table on the code
# before it.


def edit(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def named(folder: Path, seed: int, rank: int = 8) -> Path:
    """A synthetic record whose name and config_id are hashes of its config, as the runner writes them."""
    synthetic(folder, "Q+V (r=8)", "ours", seed, 0.9)
    path = next(p for p in (folder / "runs").glob(f"*-{seed}-*.json"))
    record = json.loads(path.read_text())
    config = {**record["config"], "rank": rank}
    name = f"qv_r8-ours-seed{seed}-{identity.digest(identity.identity_of(config, 'lora'))}"
    edit(
        path, name=name, config=config, config_id=identity.digest(identity.identity_of(config, "lora", False))
    )
    return path


def fingerprints(path: Path, eval_sha: str = "e", train_sha: str = "t") -> None:
    sets = {"train": {"examples": 10, "sha256": train_sha}, "eval": {"examples": N, "sha256": eval_sha}}
    edit(path, data=sets)


def test_runs_on_other_data_or_with_edited_records_are_refused(tmp_path) -> None:
    paths = [named(tmp_path, seed) for seed in (0, 1, 2)]
    for path in paths:
        fingerprints(path)
    assert analysis.load_runs(tmp_path)["seed"].tolist() == [0, 1, 2]
    fingerprints(paths[2], eval_sha="altered test texts")
    with pytest.raises(ValueError, match=r"qv_r8-ours-seed2-\w+ read other evaluation data than the rest"):
        analysis.load_runs(tmp_path)
    fingerprints(paths[2])
    edit(paths[2], config={**json.loads(paths[2].read_text())["config"], "rank": 16})  # relabelled by hand
    with pytest.raises(ValueError, match=r"-2-\w+.json: its config does not hash to its name and config_id"):
        analysis.load_runs(tmp_path)
    named(tmp_path, 2)
    fingerprints(paths[2])
    edit(paths[1], accuracy=0.95)  # the predictions score 0.90
    with pytest.raises(ValueError, match="scores 0.9000 but its record says accuracy 0.9500"):
        analysis.correctness(analysis.load_runs(tmp_path))


def test_failed_runs_are_counted_and_outputs_of_an_earlier_analysis_do_not_stay(tmp_path) -> None:
    from lora_lab.analysis.__main__ import main

    for seed in (0, 1):
        for label in ("Q+V (r=8)", "Q+V (r=4)"):
            synthetic(tmp_path, label, "ours", seed, 0.9 - 0.01 * seed, shuffle=True)
    failed = next((tmp_path / "runs").glob("Q+V (r=8)-ours-1-*.json"))
    edit(
        failed,
        status="failed",
        reason="loss inf at steps 10-20; lower lora_lr",
        accuracy=None,
        predictions=None,
    )
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - better: {a: 'Q+V (r=8)', b: 'Q+V (r=4)'}\n")
    main([str(tmp_path), "--claims", str(claims)])
    table = (tmp_path / "table.md").read_text()
    assert "1 run(s) of Q+V (r=8) (ours) failed: seed 1: loss inf at steps 10-20; lower lora_lr" in table
    assert "from 4 records, sha256 " in table and "from 4 records" in (tmp_path / "findings.md").read_text()
    main([str(tmp_path), "--claims", "none"])
    assert not any((tmp_path / f).exists() for f in ("findings.md", "findings.csv", "findings.png"))
    assert (tmp_path / "table.md").is_file()


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"better": {"a": "A", "b": "B", "by": 50}}, "unknown key 'by'; did you mean by_pp (of an at_least"),
        ({"statment": "x", "better": {"a": "A", "b": "B"}}, "unknown key 'statment'; did you mean statement"),
        ({"equivalent": {"a": "A", "b": "B", "margin_pp": -2}}, "margin_pp=-2 is not allowed; use a number"),
        ({"at_least": {"a": "A", "b": "B", "by_pp": -1}}, "by_pp=-1 is not allowed"),
        ({"better": {"a": "A", "b": "A"}}, "compares 'A' with itself"),
        ({"better": {"a": "A", "b": "B", "impl": "PEFT"}}, "impl='PEFT' is not allowed; use ours or peft"),
        ({"at_least": {"a": "A", "b": "B"}}, "at_least lacks by_pp"),
    ],
)
def test_a_mistaken_claim_is_refused_naming_its_file_and_claim(tmp_path, spec, error) -> None:
    path = tmp_path / "claims.yaml"
    ok = {"statement": "fine", "better": {"a": "A", "b": "B"}}
    path.write_text(json.dumps({"claims": [ok, spec]}))  # JSON is YAML
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, claim 2.*{re.escape(error)}"):
        claims_module.load_claims("x", path)


def test_a_rate_next_to_a_collapse_is_passed_over_even_at_the_bottom_of_the_grid() -> None:
    table = pd.DataFrame(
        {
            "label": ["LoRA"] * 3,
            "impl": ["ours"] * 3,
            "lr": [1e-4, 3e-4, 1e-3],
            "accuracy": [80.0, 50.0, 50.0],
            "collapsed_seeds": [(), (0,), (0,)],
            "ci_low": 0.0,
            "ci_high": 100.0,
            "n": 1,
        }
    )
    chosen = rates.choose(table)
    assert not chosen["chosen"].any()  # the lowest rate sits next to a collapse: widen the grid down
    assert chosen["passed"].tolist() == [True, False, False]


def test_a_latency_file_that_is_no_current_bench_json_is_refused_naming_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="--latency nowhere.json: no such file"):
        read_bench("nowhere.json")
    (tmp_path / "notes.json").write_text("timings: 3 ms")
    with pytest.raises(ValueError, match=r"--latency .*notes.json: not JSON"):
        read_bench(tmp_path / "notes.json")
    # a committed bench from before the conf/method rows were renamed (its variants are "qv", "attn_ffn")
    old = CONF_DIR.parent / "results" / "bench" / "minilm_cpu_b16_s128_bf16.json"
    runs = pd.DataFrame({"config_id": ["a"], "row": ["qv_r8"], "impl": ["ours"]})
    message = r"--latency .*: variant 'qv' is no conf/method row today \(the file was written by a bench from"
    with pytest.raises(ValueError, match=message):
        add_latency(pd.DataFrame({"config_id": ["a"]}), runs, read_bench(old), f"--latency {old}")


def test_a_rows_cost_is_its_seeds_mean_and_sd_on_the_host_kind_most_runs_ran_on(tmp_path) -> None:
    timings = {0: (100.0, 10.0, "host A"), 1: (120.0, 12.0, "host A"), 2: (900.0, 90.0, "host B")}
    for seed, (train_s, score_s, machine) in timings.items():
        synthetic(tmp_path, "Q+V (r=8)", "ours", seed, 0.9)
        path = next((tmp_path / "runs").glob(f"*-ours-{seed}-*.json"))
        record = json.loads(path.read_text())
        record.update(train_wall_s=train_s, eval_wall_s=score_s, machine=machine, peak_memory_mb=1000 + seed)
        path.write_text(json.dumps(record))
    synthetic(tmp_path, "Q+V (r=8)", "peft", 0, 0.9)  # a record without timings (written before them)
    table, _ = analysed(tmp_path)
    ours, peft = (table[table["impl"] == impl].iloc[0] for impl in ("ours", "peft"))
    assert (ours["cost_n"], ours["train_s"], ours["score_s"]) == (2, 110.0, 11.0)  # host B's run left out
    assert ours["train_s_sd"] == pytest.approx(np.std([100, 120], ddof=1))
    assert ours["peak_memory_mb"] == 1000.5
    assert peft["cost_n"] == 0 and np.isnan(peft["train_s"])
    shown = analysis.table.to_markdown(table)
    assert "| 110 ± 14 / 11 ± 1 |" in shown and "| — / — |" in shown


def test_the_pareto_front_keeps_the_rows_nothing_beats_on_both_counts() -> None:
    table = pd.DataFrame(
        {
            "configuration": list("abcde"),
            "train_s": [10.0, 20.0, 20.0, 30.0, 40.0],
            "accuracy": [70.0, 80.0, 75.0, 79.0, 85.0],
        }
    )
    assert list(pareto_front(table, "train_s")["configuration"]) == ["a", "b", "e"]


@requires_assets
def test_the_probe_script_regenerates_its_committed_verdicts(monkeypatch, capsys) -> None:
    """experiments/imdb_rank_target/probe_vs_head_only.py, run as its docstring says, prints the committed
    file."""
    folder = REPO / "results" / "imdb_rank_target" / "cpu_minilm"
    script = REPO / "experiments" / "imdb_rank_target" / "probe_vs_head_only.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(folder)])
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out == (folder / "probe_vs_head_only.txt").read_text()
