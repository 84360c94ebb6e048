"""The runner through its real command line: sweeps, ours vs PEFT curves, resume, wandb, user errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ASSETS, requires_assets

pytestmark = requires_assets

TINY = [
    "model=tiny_bert",
    "data.train_size=64",
    "data.eval_size=64",
    "data.max_length=64",
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.log_every=1",
]


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One tokenisation cache for the whole session, as a sweep would share one."""
    return tmp_path_factory.mktemp("token-cache")


def cli(tmp_path: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORA_LAB_ASSETS": str(ASSETS), "LORA_LAB_CACHE": str(cache), "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "lora_lab.run", *overrides, f"results_dir={tmp_path / 'results'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def records(tmp_path: Path, experiment: str = "default") -> list[dict]:
    runs = sorted((tmp_path / "results" / experiment / "runs").glob("*.json"))
    return [json.loads(p.read_text()) for p in runs]


def test_rank_sweep_writes_three_records(tmp_path, token_cache) -> None:
    out = cli(tmp_path, token_cache, "-m", "rank=4,8,16", *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    recs = records(tmp_path)
    assert sorted(r["rank"] for r in recs) == [4, 8, 16]
    for r in recs:
        assert r["status"] == "complete" and r["label"] == f"Q+V (r={r['rank']})"
        assert r["config"]["alpha"] == 2 * r["rank"]  # resolved, no ${...} left
        # tiny_bert: hidden 32, 2 layers, q and v: r*(32+32) per module; plus the classifier 32*2+2
        assert r["trainable_params"] == 2 * 2 * r["rank"] * 64 + 66
        assert r["eval_examples"] == 64 and 0 <= r["accuracy"] <= 1
        assert (tmp_path / "results" / "default" / "runs" / r["name"] / "adapter_model.safetensors").is_file()


def test_ours_and_peft_give_the_same_curve_without_dropout(tmp_path, token_cache) -> None:
    out = cli(tmp_path, token_cache, "-m", *TINY, "impl=ours,peft", "dropout=0", "trainer.epochs=2")
    assert out.returncode == 0, out.stderr[-2000:]
    ours, peft = sorted(records(tmp_path), key=lambda r: r["impl"])
    assert (ours["impl"], peft["impl"]) == ("ours", "peft")
    assert len(ours["train_loss_curve"]) == 8
    assert ours["train_loss_curve"] == pytest.approx(peft["train_loss_curve"], abs=1e-4)
    assert ours["trainable_params"] == peft["trainable_params"]


def test_ours_and_peft_agree_with_dropout_on_real_minilm(tmp_path, token_cache) -> None:
    out = cli(
        tmp_path,
        token_cache,
        "-m",
        "impl=ours,peft",
        "model=minilm",
        "data.train_size=192",
        "data.eval_size=200",
        "data.max_length=64",
        "trainer.epochs=1",
        "trainer.progress=false",
        "method.lr=1e-3",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ours, peft = sorted(records(tmp_path), key=lambda r: r["impl"])
    assert ours["config"]["dropout"] == 0.1
    # 200 eval examples: a binomial std of about 0.035 each, so 0.12 is over 2.5 std of the difference.
    assert abs(ours["accuracy"] - peft["accuracy"]) <= 0.12, (ours["accuracy"], peft["accuracy"])


def test_resume_skips_complete_runs_and_force_reruns(tmp_path, token_cache) -> None:
    first = cli(tmp_path, token_cache, "experiment=smoke")
    assert first.returncode == 0, first.stderr[-2000:]
    [record] = records(tmp_path, "smoke")
    again = cli(tmp_path, token_cache, "experiment=smoke")
    assert again.returncode == 0 and "complete already, skipped" in again.stdout
    assert records(tmp_path, "smoke") == [record]
    forced = cli(tmp_path, token_cache, "experiment=smoke", "force=true")
    assert forced.returncode == 0 and "skipped" not in forced.stdout
    [rerun] = records(tmp_path, "smoke")
    assert rerun["name"] == record["name"] and rerun["finished_at"] >= record["finished_at"]


def test_non_finite_loss_fails_that_run_and_the_sweep_goes_on(tmp_path, token_cache) -> None:
    out = cli(tmp_path, token_cache, "-m", *TINY, "method=full", "method.lr=1e30,1e-3")
    assert out.returncode == 0, out.stderr[-2000:]
    by_lr = {r["config"]["method"]["lr"]: r for r in records(tmp_path)}
    assert by_lr[1e30]["status"] == "failed" and "loss became" in by_lr[1e30]["reason"]
    assert by_lr[1e-3]["status"] == "complete"


def test_each_sweep_job_writes_its_own_offline_wandb_run(tmp_path, token_cache) -> None:
    out = cli(
        tmp_path, token_cache, "-m", "experiment=smoke", "rank=4,8", "logger=wandb", "logger.mode=offline"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted((tmp_path / "results" / "smoke" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(list(run.glob("*.wandb")) for run in runs)
    logs = [next(run.glob("*.wandb")).read_bytes() for run in runs]
    assert all(b"${" not in log for log in logs)  # the resolved config: no interpolations left
    names = [set(re.findall(rb"qv_r[48]-ours-seed0-[0-9a-f]{8}", log)) for log in logs]
    stored = {r["name"].encode() for r in records(tmp_path, "smoke")}
    assert sorted(len(n) for n in names) == [1, 1] and names[0] != names[1] and names[0] | names[1] == stored


def bad_parquet_folder(tmp_path: Path) -> str:
    folder = tmp_path / "bad_imdb"
    folder.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"review": ["good", "bad"], "label": [1, 0]}).to_parquet(folder / f"{split}.parquet")
    return f"data.source={folder}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["method=nope"], "Could not find 'method/nope'"),
        (["method.targets=[nope]"], "target module(s) ['nope'] not found"),
        (["model=tiny_llama", "method.targets=[q_lin]"], "target module(s) ['q_lin'] not found"),
        (["rank=0"], "rank must be a positive integer"),
        (["rank=64"], "rank=64 exceeds min(d_in, d_out)=32"),
        (["alpha=-1"], "alpha must be > 0"),
        (["dropout=1.5"], "dropout must be in [0, 1)"),
        (["impl=foo"], "impl='foo' is not one of"),
        (["trainer.precision=fp64"], "trainer.precision='fp64' is not one of"),
        (["data.source=/nonexistent/imdb"], "data.source='/nonexistent/imdb' does not exist"),
        ([bad_parquet_folder], "no column(s) ['text']"),
        (["data.train_size=30000"], "data.train_size=30000 but the split has 25000 examples"),
    ],
)
def test_user_errors_give_one_line_and_no_record(tmp_path, token_cache, overrides, message) -> None:
    overrides = [o(tmp_path) if callable(o) else o for o in overrides]
    out = cli(tmp_path, token_cache, *TINY, *overrides)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "results").rglob("*.json"))
