"""replicate on a tiny study of two seeds: an untouched run replicates bit for bit, a planted change to the
committed predictions is drifted, and a run whose data fingerprint no longer matches is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import ASSETS, TINY_RUN, requires_assets

from lora_lab import config, recipe, replicate


@pytest.fixture
def tiny_study(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path / "cache"))
    for seed in (0, 1):
        overrides = [*TINY_RUN, f"seed={seed}", f"results_dir={tmp_path / 'results'}", "experiment_name=tiny"]
        recipe.run(config.compose([*overrides, "trainer.max_steps=2", "trainer.progress=false"]))
    return tmp_path / "results" / "tiny"


def report(out: Path) -> list[dict]:
    return json.loads((out / "replication.json").read_text())


@requires_assets
@pytest.mark.slow
def test_replicate_finds_identical_runs_and_a_planted_change_drifted(tiny_study, tmp_path) -> None:
    before = {p: p.read_bytes() for p in tiny_study.rglob("*") if p.is_file()}
    replicate.main([str(tiny_study), "--runs", "1", "--out", str(tmp_path / "same")])
    [same] = report(tmp_path / "same")
    assert same["verdict"] == "identical" and same["accuracy_delta_pp"] == 0
    assert same["environment_rerun"]["git_commit"] == same["environment_record"]["git_commit"]
    assert {p: p.read_bytes() for p in tiny_study.rglob("*") if p.is_file()} == before  # records only read

    record = json.loads((tiny_study / "runs" / f"{same['name']}.json").read_text())
    path = tiny_study / "runs" / record["predictions"]["file"]
    preds = pd.read_parquet(path)
    preds["pred"] = (
        1 - preds["pred"]
    )  # every committed prediction changed: beyond any two seeds' disagreement
    preds.to_parquet(path, index=False)
    replicate.main([str(tiny_study), "--names", same["name"], "--out", str(tmp_path / "planted")])
    [planted] = report(tmp_path / "planted")
    assert planted["verdict"] == "drifted" and planted["predictions_agree"] < planted["seeds_agree_at_least"]


@requires_assets
@pytest.mark.slow
def test_a_run_whose_data_changed_is_refused_in_one_line(tiny_study, tmp_path, capsys) -> None:
    path = next((tiny_study / "runs").glob("*seed0*.json"))
    record = json.loads(path.read_text())
    record["data"]["eval"]["sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_:
        replicate.main([str(tiny_study), "--names", record["name"], "--out", str(tmp_path / "out")])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "its data fingerprint differs from what it would read now" in line
    assert not (tmp_path / "out").exists()
