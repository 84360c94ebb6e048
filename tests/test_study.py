"""The study runner on a tiny study: a plan with looks at 2 and 3 seeds, one claim between two rows. It runs
the seeds each look needs, looks, stops at the plan's maximum, and a rerun finds nothing left to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, requires_assets
from helpers import run_module

from lora_lab import study

TINY = [
    "model=tiny_bert",
    "data.train_size=32",
    "data.eval_size=32",
    "data.max_length=32",
    "trainer.epochs=1",
    "trainer.progress=false",
    "experiment_name=tiny_study",
]


def tiny_plan(folder: Path) -> Path:
    (folder / "claims.yaml").write_text(
        'claims:\n  - statement: "r=8 beats head-only"\n'
        '    better: {a: "Q+V (r=8)", b: "Classification Head Only"}\n'
    )
    plan = folder / "plan.yaml"
    plan.write_text(
        f"version: 1\nstudy: tiny\nresults: {folder / 'results' / 'tiny_study'}\nclaims: claims.yaml\n"
        "alpha: 0.05\nmax_seeds: 3\nlooks: [2, 3]\nspending: obrien_fleming_union\n"
    )
    return plan


def test_a_budget_reads_hours_or_minutes_and_refuses_anything_else() -> None:
    assert study.hours("3h") == 3 * 3600 and study.hours("90m") == 5400 and study.hours("1.5h") == 5400
    for bad in ("3", "0h", "-1h", "3 hours"):
        with pytest.raises(ValueError, match="use hours or minutes above 0"):
            study.hours(bad)


def sweeps_here(monkeypatch) -> None:
    """Each `python -m lora_lab.run ...` the study starts runs in this process instead (the same entry point,
    without an interpreter's start per round); any other command (git) runs as before."""
    real = subprocess.run

    def run(command: list[str], *args, **kwargs) -> subprocess.CompletedProcess:
        if command[:3] != [sys.executable, "-m", "lora_lab.run"]:
            return real(command, *args, **kwargs)
        code = run_module("lora_lab.run", command[3:], monkeypatch)
        if code and kwargs.get("check"):
            raise subprocess.CalledProcessError(code, command)
        return subprocess.CompletedProcess(command, code)

    monkeypatch.setattr(subprocess, "run", run)


@requires_assets
@pytest.mark.slow
def test_the_study_runs_each_look_stops_at_the_plans_maximum_and_resumes(tmp_path, monkeypatch, capsys):
    """The study's command in this process, and the sweep it starts each round too (sweeps_here)."""
    plan = tiny_plan(tmp_path)
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path / "cache"))
    sweeps_here(monkeypatch)
    command = ["imdb_cpu", *TINY, f"results_dir={tmp_path / 'results'}"]
    command += ["--budget", "1h", "--jobs", "1", "--plan", str(plan)]
    assert run_module("lora_lab.study", [*command, "--dry-run"], monkeypatch) == 0
    dry = capsys.readouterr().out
    assert "Q+V (r=8) (ours) seeds [0, 1]" in dry and "Classification Head Only seeds [0, 1]" in dry
    assert "cost unknown" in dry  # nothing has run yet
    assert run_module("lora_lab.study", command, monkeypatch) == 0
    out = capsys.readouterr().out
    records = sorted(
        p.name.split("-")[0] + p.name.split("-")[2] for p in (tmp_path / "results").rglob("runs/*.json")
    )
    assert records == sorted(f"{row}seed{s}" for row in ("head_only", "qv_r8") for s in range(3))
    assert "no claim is open" in out and "claims decided" in out
    assert run_module("lora_lab.study", command, monkeypatch) == 0
    again = capsys.readouterr().out
    assert "no claim is open" in again and "lora_lab.run" not in again
