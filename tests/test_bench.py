"""The benchmark: its variants are what they claim, and it writes its JSON (timings are never asserted)."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys

import pytest
import torch
from conftest import ASSETS, requires_assets
from helpers import imported, run_module

from lora_lab import config, cost, methods
from lora_lab.bench import cli, e2e, timing, variants
from lora_lab.params import count, frozen_bytes

ARGS = argparse.Namespace(
    model="tiny_bert",
    batch=2,
    seq=16,
    rank=4,
    dropout=0.1,
    quant=None,
    precision="fp32",
    checkpointing=False,
    cheap_dropout=True,
)


def test_floor_trains_the_head_but_backpropagates_through_the_frozen_stack() -> None:
    model = variants.build(ARGS, "floor")[0]
    assert count(model)[0] == 32 * 2 + 2  # tiny_bert's classifier only
    seen = []
    model.bert.encoder.layer[0].register_full_backward_hook(lambda _m, grad_in, _o: seen.append(grad_in[0]))
    model(**variants.fake_batch(model, ARGS, torch.device("cpu"))).loss.backward()
    assert seen and seen[0] is not None  # the input gradient reached the first layer


def test_rows_without_a_step_over_tokens_are_left_out(capsys) -> None:
    args = argparse.Namespace(**{**vars(ARGS), "methods": ["qv_r8", "head_only_cached", "full"]})
    assert variants.train_variants(args) == ["floor", "ours:qv_r8", "peft:qv_r8", "full"]
    assert "head_only_cached left out: it trains on cached features" in capsys.readouterr().out


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
@pytest.mark.slow
def test_sequential_order_holds_one_variant_at_a_time(order) -> None:
    live, most = set(), []

    class Model:  # stands in for a variant's model: counted while it exists
        def __init__(self, name: str) -> None:
            self.name = name
            live.add(name)

        def __del__(self) -> None:
            live.discard(self.name)

    def builder(name: str):
        model = Model(name)
        return lambda: most.append(len(live)) or model

    builders = {name: (lambda n=name: builder(n)) for name in ("a", "b", "c")}
    builders["cannot merge"] = lambda: None
    medians = timing.measure(builders, rounds=3, warmup=1, device=torch.device("cpu"), order=order)
    assert set(medians) == {"a", "b", "c"}  # a builder's None is no job, not an error
    assert max(most) == (1 if order == "sequential" else 3)


# A bench in seconds: a tiny random BERT, one round; the variants follow `--methods`.
TINY_BENCH = [
    "--model",
    "tiny_bert",
    "--batch",
    "2",
    "--seq",
    "16",
    "--rounds",
    "1",
    "--warmup",
    "0",
    "--methods",
]


@pytest.mark.slow
@requires_assets
def test_bench_command_writes_every_variant(tmp_path) -> None:
    out = tmp_path / "bench.json"
    cli.main([*TINY_BENCH, "qv_r8", "ia3", "houlsby", "full", "--out", str(out)])
    result = json.loads(out.read_text())
    variants = {"ours:qv_r8", "peft:qv_r8", "ours:ia3", "peft:ia3", "houlsby", "full"}
    assert set(result["train_step_s"]) == {"floor", *variants}
    merged = {f"{v} merged" for v in variants if v.endswith(("qv_r8", "ia3"))}  # LoRA and IA3 fold in
    assert set(result["inference_s"]) == {"base", *(f"{v} unmerged" for v in variants), *merged}
    assert all(t > 0 for t in result["train_step_s"].values())
    assert set(result["provenance"]) >= {"git_commit", "git_dirty", "versions", "machine", "date"}


@pytest.mark.slow
def test_the_bench_writes_into_an_ignored_folder_unless_told(tmp_path, monkeypatch) -> None:
    """Its defaults once overwrote a committed results/bench/ file: now they land under outputs/."""
    monkeypatch.chdir(tmp_path)
    cli.main([*TINY_BENCH, "qv_r8"])
    assert [p.parent.name for p in tmp_path.rglob("*.json")] == ["bench"]
    assert next(tmp_path.rglob("*.json")).parent.parent.name == "outputs"


@pytest.mark.parametrize("flag", [["--batch", "0"], ["--seq", "1"], ["--rank", "0"], ["--rounds", "0"]])
def test_numeric_flags_out_of_range_are_one_line_before_any_work(tmp_path, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*flag, "--out", str(tmp_path / "b.json")])
    assert exit_.value.code == 2 and f"{flag[0]} {flag[1]}: use a whole number >=" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_frozen_bytes_count_a_4bit_base_as_packed_weights_and_scales() -> None:
    pytest.importorskip("bitsandbytes")
    args = argparse.Namespace(**{**vars(ARGS), "model": "tiny_llama"})
    lora = variants.build(args, "ours:attn_ffn_r8")[0]
    qlora = variants.build(args, "ours:qlora_attn_ffn_r8")[0]
    frozen = [p for p in lora.parameters() if not p.requires_grad]
    assert frozen_bytes(lora) == sum(4 * p.numel() for p in frozen)  # fp32, nothing quantised
    linears = sum(m.base_layer.weight.numel() for _, m in lora.named_modules() if hasattr(m, "lora_A"))
    layers = sum(1 for _, m in lora.named_modules() if hasattr(m, "lora_A"))
    saved = frozen_bytes(lora) - frozen_bytes(qlora)
    # Each fp32 weight (4 bytes) becomes half a byte plus its share of the block scales (under 1/16 byte
    # with double quantisation), plus a few hundred bytes of constants per layer.
    assert 4 * linears - linears / 2 - linears / 16 - 1024 * layers < saved < 4 * linears - linears / 2


@pytest.mark.slow
def test_memory_bench_measures_qlora_beside_the_float_floor_in_fresh_processes(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny_llama", "--batch", "2", "--seq", "16", "--rounds", "1", "--warmup", "0"]
    cli.main([*argv, "--methods", "qlora_attn_ffn_r8", "--memory", "--out", str(out)])
    result = json.loads(out.read_text())
    variants = {"floor", "ours:qlora_attn_ffn_r8", "peft:qlora_attn_ffn_r8"}
    assert set(result["peak_memory_mb"]) == set(result["frozen_weights_mb"]) == variants
    frozen = result["frozen_weights_mb"]
    assert frozen["ours:qlora_attn_ffn_r8"] < frozen["floor"]  # the floor's base stays in fp32
    assert frozen["ours:qlora_attn_ffn_r8"] == pytest.approx(frozen["peft:qlora_attn_ffn_r8"], rel=1e-3)
    assert "ours:qlora_attn_ffn_r8 merged" not in result["inference_s"]  # a 4-bit base is not merged into


@pytest.mark.parametrize(
    ("module", "arguments", "message"),
    [
        ("lora_lab.params", ["model=nope"], "Could not find 'model/nope'; choose one of: distilbert"),
        ("lora_lab.bench", ["--model", "tiny_bert", "--methods", "nope"], "Could not find 'method/nope'"),
        (
            "lora_lab.bench",
            ["--model", "tiny_bert", "--seq", "100000"],
            "--seq 100000: use at most the model's 512",
        ),
    ],
)
def test_unknown_names_are_one_line_and_exit_2(module, arguments, message, monkeypatch, capsys) -> None:
    """`python -m module ...` run in this process (the same entry point, without a second interpreter)."""
    assert run_module(module, arguments, monkeypatch) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_an_unknown_method_is_refused_before_torch_is_imported(tmp_path) -> None:
    """As the runner: arguments are checked before the measurements' imports, so a bad one fails at once."""
    command = [sys.executable, "-m", "lora_lab.bench", "--model", "tiny_bert", "--methods", "qv_r8", "nope"]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("HYDRA_FULL_ERROR", None)  # set to 1, it would show the traceback
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "omegaconf" in imported(out.stderr)
    assert not imported(out.stderr) & {"torch", "transformers", "peft"}
    assert out.stderr.strip().splitlines()[-1].startswith("error: In 'config': Could not find 'method/nope'")
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.slow
def test_the_end_to_end_bench_runs_the_baselines_seven_runs() -> None:
    assert len(config.sweep_jobs(e2e.E2E_SWEEP)) == 7  # seven rows, one impl, one seed
    parallel = config.sweep_jobs([*e2e.E2E_SWEEP, *e2e.E2E_PARALLEL, "hydra.launcher.n_jobs=2"])
    assert len(parallel) == 7
    assert {config.compose(job).trainer.num_threads for job in parallel} == {1}  # --jobs: one thread a job


@pytest.mark.slow
@requires_assets
def test_the_hf_trainer_baseline_script_trains_the_seven_rows(tmp_path, monkeypatch) -> None:
    """The script `--e2e` times our runner against, run in this process as the bench would run it, on 16
    reviews: the bench runs it only after hours of our own side, where a broken import would surface late."""
    sizes = argparse.Namespace(train_size=16, eval_size=16, epochs=1)
    command = e2e.hf_trainer_script(sizes, ASSETS, str(tmp_path / "baseline.json"))
    monkeypatch.setattr(sys, "argv", [*command[1:], "--max-length", "32"])  # the last value counts
    monkeypatch.chdir(tmp_path)
    runpy.run_path(command[1], run_name="__main__")
    rows = json.loads((tmp_path / "baseline.json").read_text())["rows"]
    labels = [
        methods.row_label(config.compose([f"method={row}"])) for row in config.sweep_rows("imdb_ablation")
    ]
    assert [r["label"] for r in rows] == labels and len(labels) == 7
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


@pytest.mark.slow
def test_a_studys_cost_counts_runs_not_sweep_jobs() -> None:
    runs = cost.runs_of("imdb_cpu")  # seven rows x seeds 0-2 x impl ours,peft: 42 jobs
    assert runs[("head_only", "—")][1] == runs[("full", "—")][1] == 3  # no impl: the peft job skips
    assert runs[("qv_r8", "ours")][1] == runs[("qv_r8", "peft")][1] == 3
    assert sum(n for _, n in runs.values()) == 36


@pytest.mark.slow
@requires_assets
def test_a_studys_cost_scales_a_short_sample_to_its_sizes(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    costs = cost.estimate("smoke", steps=1, eval_size=16).set_index("row")
    # smoke: one row, one run; 48 training reviews at batch 16 for one epoch = 3 steps; 32 scored reviews
    row = costs.loc["qv_r8"]
    assert (row["impl"], row["runs"], row["steps"], row["reviews"]) == ("ours", 1, 3, 32)
    assert row["train_s"] > 0 and row["eval_s"] > 0 and row["load_s"] > 0
    assert row["total_s"] == pytest.approx(row["load_s"] + row["train_s"] + row["eval_s"])
    assert "the study: 1 runs" in cost.to_text(costs.reset_index(), "smoke")


def test_against_takes_the_runner_as_it_was_at_a_commit(tmp_path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    src = e2e.source_at(head.strip(), tmp_path / "src")
    committed = subprocess.run(["git", "show", "HEAD:lora_lab/run.py"], capture_output=True, check=True)
    assert (src / "lora_lab" / "run.py").read_bytes() == committed.stdout
    with pytest.raises(ValueError, match="--against nope: not a commit"):
        e2e.source_at("nope", tmp_path / "other")
    assert not (tmp_path / "other").exists()  # nothing half-written


def test_against_precision_without_against_is_one_line(tmp_path) -> None:
    out = tmp_path / "e2e.json"
    with pytest.raises(SystemExit, match="--against-precision needs --against COMMIT"):
        cli.main(["--e2e", "--against-precision", "fp32", "--out", str(out)])
    assert not out.exists()
