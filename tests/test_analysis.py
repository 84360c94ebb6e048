"""The analysis module: tables from records, seeds aggregated, reference joined, files regenerated exactly,
the notebook executed, errors on empty or mixed folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import ASSETS, REPO, requires_assets
from nbclient import NotebookClient

from lora_lab import analysis
from lora_lab.analysis import runs as runs_module


def record(label: str, impl: str | None, seed: int, accuracy: float, **extra) -> dict:
    method = {"Classification Head Only": "head_only", "Full Fine-Tuning": "full"}.get(label, "lora")
    return {
        "name": f"{label}-{impl}-{seed}",
        "experiment": "imdb_rank_target/test",
        "label": label,
        "method": method,
        "targets": "qv" if method == "lora" else None,
        "impl": impl,
        "rank": 8 if method == "lora" else None,
        "seed": seed,
        "model": "m",
        "trainable_params": 100,
        "trainable_pct": 1.0,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "train_examples": 10,
        "eval_examples": 10,
        "status": "complete",
        **extra,
    }


def write_store(folder: Path, records: list[dict]) -> Path:
    (folder / "runs").mkdir(parents=True)
    for r in records:
        (folder / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    return folder


def test_seeds_are_averaged_and_the_reference_joined(tmp_path) -> None:
    folder = write_store(
        tmp_path,
        [
            record("Q+V (r=8)", "ours", 0, 0.90),
            record("Q+V (r=8)", "ours", 1, 0.92),
            record("Q+V (r=8)", "peft", 0, 0.91),
            record("Classification Head Only", None, 0, 0.80),
            record("Q+V (r=8)", "ours", 2, 0.10, status="failed"),
        ],
    )
    runs = analysis.load_runs(folder)
    table = analysis.summarize(runs, analysis.load_reference(runs["experiment"].iloc[0]))
    assert list(zip(table["configuration"], table["impl"], strict=True)) == [
        ("Classification Head Only", "—"),
        ("Q+V (r=8)", "ours"),
        ("Q+V (r=8)", "peft"),
    ]
    ours = table.iloc[1]
    assert (ours["n"], ours["accuracy"]) == (2, pytest.approx(91.0))
    assert ours["accuracy_std"] == pytest.approx(pd.Series([90.0, 92.0]).std())
    assert ours["reference_accuracy"] == 92.48 and ours["delta_pp"] == pytest.approx(91.0 - 92.48)
    markdown = analysis.table.to_markdown(table)
    assert "| Q+V (r=8) | ours | 100 | 1.00% | 91.00 ± 1.41% | 2 | 92.48% | -1.48 |" in markdown


def test_empty_and_mixed_folders_are_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no run records"):
        analysis.load_runs(tmp_path)
    folder = write_store(
        tmp_path / "mixed",
        [record("Q+V (r=8)", "ours", 0, 0.9), record("Q+V (r=8)", "peft", 0, 0.9, model="other")],
    )
    with pytest.raises(ValueError, match="mixes runs with different model"):
        analysis.load_runs(folder)
    folder = write_store(
        tmp_path / "precisions",
        [
            record("Q+V (r=8)", "ours", 0, 0.9, precision="fp32"),
            record("Q+V (r=8)", "peft", 0, 0.9, precision="bf16"),
            record("Q+V (r=4)", "ours", 0, 0.9),  # older records say nothing of precision
        ],
    )
    with pytest.raises(ValueError, match=r"mixes runs with different precision \(bf16, fp32, unrecorded\)"):
        analysis.load_runs(folder)


def test_wandb_source_reads_the_same_fields(monkeypatch) -> None:
    """wandb is unreachable here, so its API object is replaced by one serving two run summaries."""
    import wandb

    class Run:
        def __init__(self, summary: dict) -> None:
            self.summary = summary

    class Api:
        def runs(self, path: str) -> list[Run]:
            assert path == "me/lora-lab"
            return [Run(record("Q+V (r=8)", "ours", 0, 0.9)), Run(record("Full Fine-Tuning", None, 0, 0.95))]

    monkeypatch.setattr(wandb, "Api", Api)
    runs = runs_module.load_wandb_runs("me", "lora-lab")
    assert sorted(runs["impl"]) == ["ours", "—"]


@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> Path:
    """A small results folder made by the real runner: two rows, LoRA with both impls."""
    if not ASSETS.is_dir():
        pytest.skip(f"shared assets not found at {ASSETS}")
    tmp = tmp_path_factory.mktemp("analysis")
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.run",
        "-m",
        "model=tiny_bert",
        "method=head_only,qv_r8",
        "impl=ours,peft",
        "data.train_size=32",
        "data.eval_size=32",
        "data.max_length=32",
        "trainer.epochs=1",
        "trainer.progress=false",
        f"results_dir={tmp}",
        "experiment_name=imdb_rank_target/tiny",
    ]
    env = {**os.environ, "LORA_LAB_ASSETS": str(ASSETS), "LORA_LAB_CACHE": str(tmp / "cache")}
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp / "imdb_rank_target" / "tiny"


OUTPUTS = ("table.md", "table.csv", "table.tex", "acc_vs_params.png", "acc_vs_params.pdf")


@requires_assets
def test_cli_writes_and_regenerates_identical_files(real_results) -> None:
    cli = [sys.executable, "-m", "lora_lab.analysis", str(real_results)]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "| Q+V (r=8) | peft |" in first.stdout and "| Classification Head Only | — |" in first.stdout
    before = {name: (real_results / name).read_bytes() for name in OUTPUTS}
    assert subprocess.run(cli, capture_output=True, timeout=300).returncode == 0
    assert {name: (real_results / name).read_bytes() for name in OUTPUTS} == before


@requires_assets
def test_notebook_executes_on_a_results_folder(real_results, monkeypatch) -> None:
    notebook = nbformat.read(REPO / "notebooks" / "ablation.ipynb", as_version=4)
    monkeypatch.setenv("LORA_LAB_RESULTS", str(real_results))
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "Q+V (r=8)" in text and "92.48%" in text  # our row with the reference accuracy beside it
    assert any("image/png" in o.get("data", {}) for o in outputs)
