"""The runner through its real command line: sweeps, ours vs PEFT curves, resume, wandb, user errors."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import peft.peft_model
import pytest
from conftest import ASSETS, TINY_RUN, requires_assets
from helpers import cli, imported, in_process, run_module
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError

from lora_lab import recipe
from lora_lab.lora import adapter_io

pytestmark = requires_assets


def records(tmp_path: Path, experiment: str = "default") -> list[dict]:
    runs = sorted((tmp_path / "results" / experiment / "runs").glob("*.json"))
    return [json.loads(p.read_text()) for p in runs]


@pytest.mark.slow
def test_rank_sweep_writes_three_records(tmp_path, token_cache, monkeypatch) -> None:
    assert in_process(tmp_path, token_cache, monkeypatch, ["-m", "rank=4,8,16", *TINY_RUN]) == 0
    recs = records(tmp_path)
    assert sorted(r["rank"] for r in recs) == [4, 8, 16]
    for r in recs:
        assert r["status"] == "complete" and r["label"] == f"Q+V (r={r['rank']})"
        assert r["config"]["alpha"] == 2 * r["rank"]  # resolved, no ${...} left
        # tiny_bert: hidden 32, 2 layers, q and v: r*(32+32) per module; plus the classifier 32*2+2
        assert r["trainable_params"] == 2 * 2 * r["rank"] * 64 + 66
        assert r["eval_examples"] == 64 and 0 <= r["accuracy"] <= 1
        assert (tmp_path / "results" / "default" / "runs" / r["name"] / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_ours_and_peft_give_the_same_curve_without_dropout(tmp_path, token_cache, monkeypatch) -> None:
    args = ["-m", *TINY_RUN, "impl=ours,peft", "dropout=0", "trainer.epochs=2"]
    assert in_process(tmp_path, token_cache, monkeypatch, args) == 0
    ours, peft = sorted(records(tmp_path), key=lambda r: r["impl"])
    assert (ours["impl"], peft["impl"]) == ("ours", "peft")
    assert len(ours["train_loss_curve"]) == 8
    assert ours["train_loss_curve"] == pytest.approx(peft["train_loss_curve"], abs=1e-4)
    assert ours["trainable_params"] == peft["trainable_params"]


@pytest.mark.slow
@requires_assets
def test_ours_and_peft_train_the_same_curve_with_dropout_on_real_minilm(tmp_path, token_cache, monkeypatch):
    """With torch's dropout (trainer.cheap_dropout=false) our LoRA layers and PEFT's draw their masks from the
    same generator in the same order, so real MiniLM with dropout 0.1 trains the same curve, step for step.
    (With the cheap masks, the CPU's default, ours draws LoRA's from its own generator and PEFT from torch's:
    the runs then differ by their masks, as ours and PEFT's rows do in the committed studies.)

    The first loss is computed before any update, while B = 0 adds nothing: only the masks could part it, and
    other masks move it by about 2e-3. After that the two impls' different order of float operations leaves
    last-bit differences that AdamW's first steps (which scale each gradient entry to about lr) grow to up to
    about 5e-5 by step 3, depending on the CPU's kernels; hence the looser bound on the later steps."""
    from lora_lab import config

    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    overrides = [
        *("model=minilm", "data.train_size=64", "data.eval_size=64", "data.max_length=32"),
        *("trainer.epochs=1", "trainer.progress=false", "trainer.log_every=1", "trainer.cheap_dropout=false"),
        *("method.lr=1e-3", f"results_dir={tmp_path}", f"data.cache_dir={token_cache}"),
    ]
    ours, peft = (recipe.run(config.compose([*overrides, f"impl={impl}"])) for impl in ("ours", "peft"))
    assert ours["config"]["dropout"] == 0.1 and ours["config"]["trainer"]["cheap_dropout"] is False
    assert len(ours["train_loss_curve"]) == 4 and len(set(ours["train_loss_curve"])) == 4
    assert ours["train_loss_curve"][0] == peft["train_loss_curve"][0]
    assert ours["train_loss_curve"] == pytest.approx(peft["train_loss_curve"], abs=2e-4)
    assert ours["eval_loss"] == pytest.approx(peft["eval_loss"], abs=1e-4)


@pytest.mark.slow
def test_resume_skips_complete_runs_and_force_reruns(tmp_path, token_cache, monkeypatch, capsys) -> None:
    assert in_process(tmp_path, token_cache, monkeypatch, ["experiment=smoke"]) == 0
    [record] = records(tmp_path, "smoke")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no outputs/<date>/.hydra clutter
    capsys.readouterr()
    assert in_process(tmp_path, token_cache, monkeypatch, ["experiment=smoke"]) == 0
    assert "complete already, skipped" in capsys.readouterr().out
    assert records(tmp_path, "smoke") == [record]
    assert in_process(tmp_path, token_cache, monkeypatch, ["experiment=smoke", "force=true"]) == 0
    assert "skipped" not in capsys.readouterr().out
    [rerun] = records(tmp_path, "smoke")
    assert rerun["name"] == record["name"] and rerun["finished_at"] >= record["finished_at"]


def reviews(folder: Path, word: str) -> Path:
    """A parquet IMDB-style folder of 64 train and 48 test reviews, every text built around `word`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("test", 48)):
        texts = [f"{word} review {i}: {'good' if i % 2 else 'bad'} film" for i in range(n)]
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(n)]}).to_parquet(
            folder / f"{split}.parquet"
        )
    return folder


@pytest.mark.slow
def test_a_finished_run_counts_only_on_the_data_it_ran_on(tmp_path, token_cache, monkeypatch, capsys) -> None:
    folder = tmp_path / "reviews"
    setting = [
        *TINY_RUN,
        "data.train_size=48",
        "data.eval_size=32",
        f"data.source={reviews(folder, 'first')}",
    ]
    assert in_process(tmp_path, token_cache, monkeypatch, setting) == 0
    [record] = records(tmp_path)
    assert record["data"]["eval"]["examples"] == 32 and len(record["data"]["train"]["sha256"]) == 64
    reviews(folder, "other")  # the same folder, the same settings, other reviews in it
    capsys.readouterr()
    assert in_process(tmp_path, token_cache, monkeypatch, setting) == 2
    changed = capsys.readouterr()
    assert "skipped" not in changed.out
    [line] = changed.err.strip().splitlines()
    assert f"{record['name']}.json finished on other data (eval: 32 examples, sha256 " in line
    assert "force=true" in line and records(tmp_path) == [record]
    assert in_process(tmp_path, token_cache, monkeypatch, [*setting, "force=true"]) == 0
    [rerun] = records(tmp_path)
    assert rerun["name"] == record["name"] and rerun["data"] != record["data"]
    (tmp_path / "results" / "default" / "runs" / rerun["predictions"]["file"]).unlink()
    capsys.readouterr()
    assert in_process(tmp_path, token_cache, monkeypatch, setting) == 0
    again = capsys.readouterr().out
    assert "predictions file" in again and "running it again" in again
    assert (tmp_path / "results" / "default" / "runs" / rerun["predictions"]["file"]).is_file()


@pytest.mark.slow
def test_ctrl_c_ends_a_run_in_one_line_and_leaves_nothing(tmp_path, token_cache) -> None:
    env = {**os.environ, "LORA_LAB_ASSETS": str(ASSETS), "LORA_LAB_CACHE": str(token_cache)}
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.run",
        *TINY_RUN,
        "trainer.epochs=1000",
        f"results_dir={tmp_path / 'r'}",
    ]
    run_ = subprocess.Popen(  # SIGINT as a terminal gives it, even where the suite runs with it ignored
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (a background job's is SIG_IGN)
    )
    for line in run_.stdout:  # training has begun once the run has said what it trains
        if "trainable" in line:
            break
    run_.send_signal(signal.SIGINT)
    _, err = run_.communicate(timeout=120)
    assert run_.returncode == 130
    assert err.strip().splitlines() == [
        "interrupted: the run in progress left no record; the same command resumes"
    ]
    assert not [p for p in (tmp_path / "r").rglob("*") if p.is_file()]


@pytest.mark.slow
def test_non_finite_loss_fails_that_run_and_the_sweep_goes_on(tmp_path, token_cache, monkeypatch) -> None:
    args = ["-m", *TINY_RUN, "method=full", "method.lr=1e30,1e-3"]
    assert in_process(tmp_path, token_cache, monkeypatch, args) == 0
    by_lr = {r["config"]["method"]["lr"]: r for r in records(tmp_path)}
    assert by_lr[1e30]["status"] == "failed" and "loss became" in by_lr[1e30]["reason"]
    assert "lower method.lr" in by_lr[1e30]["reason"]
    assert not (tmp_path / "results" / "default" / "runs" / f"{by_lr[1e30]['name']}.preds.parquet").exists()
    assert by_lr[1e-3]["status"] == "complete"


def wandb_inspect(run_dir: Path, *flags: str) -> str:
    """wandb's own reader of an offline run's log (`wandb leet inspect`), as a user would read it."""
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", *flags, str(run_dir)], capture_output=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.decode()


@pytest.mark.slow
def test_each_sweep_job_writes_an_offline_wandb_run_that_wandb_reads_back(tmp_path, token_cache) -> None:
    """A fresh interpreter, as a user's sweep: wandb's banner and the notice bitsandbytes prints as PEFT first
    imports it must not reach the terminal."""
    sweep = ["-m", "experiment=smoke", "impl=ours,peft", "logger=wandb", "logger.mode=offline"]
    out = cli(tmp_path, token_cache, *sweep)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernels" not in out.stdout + out.stderr  # bitsandbytes' import-time notice, silenced
    runs = sorted((tmp_path / "results" / "smoke" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and out.stdout.count("wandb offline run: ") == 2
    assert not [
        line for line in (out.stdout + out.stderr).splitlines() if line.startswith("wandb:")
    ]  # banner
    by_name = {r["name"]: r for r in records(tmp_path, "smoke")}
    for run_dir in runs:
        state = json.loads(wandb_inspect(run_dir, "--summary"))
        record = by_name[state["summary"]["name"]]  # each job its own run, named as its record
        assert state["config"]["impl"] == record["impl"]  # each run's config is its own job's
        assert state["config"]["rank"] == record["rank"] and state["config"]["alpha"] == 2 * record["rank"]
        assert state["config"]["trainer"]["precision"] == record["precision"]  # resolved, not "auto"
        assert state["summary"]["accuracy"] == pytest.approx(record["accuracy"])
        history = [json.loads(line) for line in wandb_inspect(run_dir).splitlines() if '"history"' in line]
        curve = [h["history"]["item"]["train/loss"] for h in history]
        assert curve == pytest.approx(record["train_loss_curve"])
    assert len(by_name) == 2


def parquet_folder(tmp_path: Path, frame: pd.DataFrame) -> str:
    folder = tmp_path / "imdb_like"
    folder.mkdir()
    for split in ("train", "test"):
        frame.to_parquet(folder / f"{split}.parquet")
    return f"data.source={folder}"


def no_text_column(tmp_path: Path) -> str:
    return parquet_folder(tmp_path, pd.DataFrame({"review": ["good", "bad"], "label": [1, 0]}))


def empty_dataset(tmp_path: Path) -> list[str]:
    empty = pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype="int64")})
    return [parquet_folder(tmp_path, empty), "data.train_size=null", "data.eval_size=null"]


def reviews_with(**columns: list) -> object:
    """A parquet folder of 80 reviews per split (both labels), with `columns` replacing the first rows."""

    def make(tmp_path: Path) -> list[str]:
        plain = {"text": [f"review {i}" for i in range(80)], "label": [i % 2 for i in range(80)]}
        frame = pd.DataFrame({k: columns.get(k, []) + v[len(columns.get(k, [])) :] for k, v in plain.items()})
        return [parquet_folder(tmp_path, frame), "data.train_size=48", "data.eval_size=32"]

    return make


def one_class(tmp_path: Path) -> list[str]:
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(80)], "label": [1] * 80})
    return [parquet_folder(tmp_path, frame), "data.train_size=48", "data.eval_size=32"]


TRACEBACK_HINT = "(HYDRA_FULL_ERROR=1 shows the traceback)"
BAD_INPUT = [  # (overrides, what the one line must say)
    (["model=nope"], "Could not find 'model/nope'; choose one of: distilbert, "),
    (["method=nope"], "Could not find 'method/nope'"),
    (["trainer.foo=1"], "trainer.foo: lora-lab reads no setting 'trainer.foo', so it would change nothing"),
    (["rank=["], "cannot parse the override 'rank=['"),
    (["method.targets=[nope]"], "target module(s) ['nope'] not found"),
    (["model=tiny_llama", "method.targets=[q_lin]"], "target module(s) ['q_lin'] not found"),
    (["rank=0"], "rank must be a positive integer"),
    (["rank=abc"], "rank must be a positive integer, got 'abc'"),
    (["rank=64"], "rank=64 exceeds min(d_in, d_out)=32"),
    (["alpha=-1"], "alpha must be > 0"),
    (["dropout=1.5"], "dropout must be in [0, 1)"),
    (["impl=foo"], "impl='foo' is not one of"),
    (["seed=-1"], "seed=-1 is not allowed; use an integer in [0, 2**32)"),
    (["lora_lr=-1"], "lora_lr=-1 is not allowed; use a learning rate > 0"),
    (["method=head_only", "head_lr=-1"], "head_lr=-1 is not allowed; use a learning rate > 0"),
    (["method=full", "method.lr=0"], "method.lr=0 is not allowed; use a learning rate > 0"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed; use a whole number >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not allowed"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is not allowed"),
    (["trainer.batch_size=-1"], "trainer.batch_size=-1 is not allowed"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0 is not allowed"),
    (["trainer.log_every=0"], "trainer.log_every=0 is not allowed"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0 is not allowed; use a max gradient norm > 0, or null"),
    (["trainer.warmup_ratio=1.5"], "trainer.warmup_ratio=1.5 is not allowed; use a fraction in [0, 1)"),
    (["trainer.weight_decay=-0.1"], "trainer.weight_decay=-0.1 is not allowed"),
    (["trainer.precision=fp64"], "trainer.precision='fp64' is not allowed; use one of"),
    (
        ["trainer.cheap_dropout=maybe"],
        "trainer.cheap_dropout='maybe' is not allowed; use auto, true or false",
    ),
    (["trainer.device=gpu"], "trainer.device='gpu' is not allowed; use auto, cpu, cuda or cuda:N"),
    (["data.train_size=0"], "data.train_size=0 is not allowed"),
    (["data.max_length=0"], "data.max_length=0 is not allowed"),
    (["data.source=/nonexistent/imdb"], "data.source='/nonexistent/imdb' does not exist"),
    ([no_text_column], "no column(s) ['text']"),
    ([empty_dataset], "the train split holds no examples"),
    (["data.train_size=30000"], "data.train_size=30000 but the split has 25000 examples"),
    (["-m", "rank=4,8", "trainer.max_steps=0"], "trainer.max_steps=0 is not allowed"),
    (
        ["experiment_name=../.."],
        "experiment_name='../..' is not allowed; use a folder name inside results_dir",
    ),
    (["experiment_name="], "experiment_name='' is not allowed; use a folder name inside results_dir"),
    (["+trainer.epoch=1"], "+trainer.epoch: lora-lab reads no setting 'trainer.epoch', so it would change"),
    (["+trainer.epoch=1"], "did you mean trainer.epochs=...?"),
    (["-m", "rank=4,abc"], "rank must be a positive integer, got 'abc'"),  # refused before job 0 starts
    (["-m", "method=qv_r8,full", "full_lr=-1"], "full_lr=-1 is not allowed"),
    # the local copies serve only the names they hold: another name goes to the Hub (stubbed unreachable)
    (["data.source=someone/other-reviews"], "data.source 'someone/other-reviews' is not under"),
    (["model=minilm", "model.name=someone/other-model"], "'someone/other-model' is not under"),
    (["trainer.merge_eval=no"], "trainer.merge_eval='no' is not allowed; use true or false"),
    ([reviews_with(label=[2, 5])], "labels must be 0 (negative) and 1 (positive), found 0, 1, 2, 5"),
    ([reviews_with(text=["", None])], "2 text(s) are empty, null or not strings (first at row 0)"),
    ([one_class], "the training set holds one class only (label 1)"),
    (["method=prompt_tuning", "method.num_virtual_tokens=0"], "method.num_virtual_tokens=0 is not allowed"),
    (["data.max_length=600"], "data.max_length=600 is not allowed; use at most the model's 512 positions"),
    (["method=ia3", "quant=nf4"], "quant=nf4 stores the base in 4-bit integers"),
    (["use_dora=no"], "use_dora must be true or false, got 'no'"),
    (["use_rslora=abc"], "use_rslora must be true or false, got 'abc'"),
    (["force=no"], "force='no' is not allowed; use true or false"),
    (["alpha=abc"], "alpha must be > 0, got 'abc'"),
    (["logger.wandb=true"], "logger.wandb=True is not allowed; use logger=wandb"),
    (["logger=wandb", "logger.mode=onlin"], "logger.mode='onlin' is not allowed"),
    (["dropout=abc"], "dropout must be in [0, 1), got 'abc'"),
    (
        ["method=head_only_cached", "trainer.gradient_checkpointing=true"],
        "use trainer.gradient_checkpointing=false",
    ),
    (["model=tiny_llama", "method=head_only_cached"], "head reads every position; use method=head_only"),
    # issue #38's catalogue: each of these misled or ended in a traceback before
    (
        ["trainer.epoch=1"],
        "trainer.epoch: lora-lab reads no setting 'trainer.epoch', so it would change nothing; did you mean "
        "trainer.epochs",
    ),
    (
        ["++rankk=4"],
        "++rankk: lora-lab reads no setting 'rankk', so it would change nothing; did you mean rank=",
    ),
    (["-m=true", "rank=4"], "-m=true: -m (--multirun) takes no value"),
    (
        ["+model.config.vocab_size=100"],
        "model.config.vocab_size=100 is not allowed; use at least the tokenizer's",
    ),
    (
        ["method.targets=[]"],
        "method.targets=[] adapts nothing; name the modules to adapt, e.g. method.targets=[query,value]",
    ),
    (["model=smollm2_135m", "model.gguf_file=nope.gguf"], "model.gguf_file='nope.gguf' is not in "),
    (["-m", "data.max_length=64,1000"], "data.max_length=1000 is not allowed"),  # before job 0 trains
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT)
def test_bad_input_gives_one_line_exit_2_and_no_files(
    tmp_path, token_cache, monkeypatch, capsys, overrides, message
) -> None:
    """In-process for speed; the subprocess test below checks the same through the real command line."""
    expanded = []
    for o in overrides:
        made = o(tmp_path) if callable(o) else o
        expanded += made if isinstance(made, list) else [made]
    flags = [o for o in expanded if o == "-m"]
    args = [*flags, *TINY_RUN, *[o for o in expanded if o != "-m"]]
    assert in_process(tmp_path, token_cache, monkeypatch, args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    assert not list((tmp_path / "results").rglob("*")), "bad input left files behind"


@pytest.mark.slow
def test_wandb_online_without_a_login_is_one_line_before_anything_loads(
    tmp_path, token_cache, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings: not logged in
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert (
        in_process(tmp_path, token_cache, monkeypatch, [*TINY_RUN, "logger=wandb", "logger.mode=online"]) == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: logger.mode=online needs a wandb login: run `wandb login`")
    assert not (tmp_path / "results").exists()


def test_a_bad_value_is_refused_before_torch_or_transformers_is_imported(tmp_path, token_cache) -> None:
    """The command line checks every setting before it imports the pipeline: what makes a bad value fail in
    about a second (docs/configuration.md). `-X importtime` lists every module the process imported."""
    out = cli(tmp_path, token_cache, "trainer.epochs=0", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 2
    modules = imported(out.stderr)
    assert "omegaconf" in modules  # the listing is there to read
    assert not modules & {"torch", "transformers", "peft", "pandas"}
    assert out.stderr.strip().splitlines()[-1].startswith("error: trainer.epochs=0 is not allowed")


def test_a_bad_value_is_refused_before_hydras_main_and_cfg_job_still_shows_it(
    tmp_path, token_cache, monkeypatch, capsys
) -> None:
    """Hydra's main composes twice before the run's own check; the command line refuses first. With a Hydra
    flag (`--cfg job`), Hydra's main runs as before and shows the config as given."""
    hydra_main = sys.modules["hydra.main"]  # the module (the package's `hydra.main` is the decorator)
    started = []
    real = hydra_main._run_hydra
    monkeypatch.setattr(hydra_main, "_run_hydra", lambda **kw: started.append(1) or real(**kw))
    assert in_process(tmp_path, token_cache, monkeypatch, ["trainer.epochs=0"]) == 2
    assert not started and "trainer.epochs=0 is not allowed" in capsys.readouterr().err
    assert in_process(tmp_path, token_cache, monkeypatch, ["--cfg", "job", "trainer.epochs=0"]) == 0
    assert started and "epochs: 0" in capsys.readouterr().out


def disk_full(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fill_disk_at(where: str, monkeypatch) -> None:
    """Make the disk fill up halfway through writing the run's adapter, predictions or record."""
    if where == "adapter":  # Python's own write, as our adapter writer makes it
        write_bytes = Path.write_bytes

        def half_an_adapter(path: Path, data: bytes) -> int:
            if path.name.startswith(f".{adapter_io.WEIGHTS_FILE}."):
                write_bytes(path, data[: len(data) // 2])
                raise disk_full(path)
            return write_bytes(path, data)

        monkeypatch.setattr(Path, "write_bytes", half_an_adapter)
    elif where == "peft adapter":  # what PEFT's safetensors writer raises on a full disk (not an OSError)

        def save_file(tensors, filename, metadata=None) -> None:
            Path(filename).write_bytes(b"half an adapter")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)
    elif where == "predictions":

        def to_parquet(frame, path, **kwargs) -> None:
            Path(path).write_bytes(b"PAR1")
            raise disk_full(path)

        monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    else:
        write_text = Path.write_text

        def half_a_record(path: Path, text: str, *args, **kwargs) -> int:
            if path.parent.name == "runs" and ".json." in path.name:  # the record's temporary file
                write_text(path, text[: len(text) // 2])
                raise disk_full(path)
            return write_text(path, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", half_a_record)


@pytest.mark.parametrize("where", ["adapter", "peft adapter", "predictions", "record"])
@pytest.mark.slow
def test_a_full_disk_leaves_nothing_half_written(tmp_path, token_cache, monkeypatch, capsys, where) -> None:
    fill_disk_at(where, monkeypatch)
    args = [*TINY_RUN, "impl=peft"] if where == "peft adapter" else TINY_RUN
    assert in_process(tmp_path, token_cache, monkeypatch, args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert (
        line.startswith("error: no space left on the device writing into ") and "same command again" in line
    )
    left = [p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*") if not p.is_dir()]
    hidden = [p.name for p in (tmp_path / "results").rglob(".*")]  # a .partial adapter, a .tmp file
    assert not left and not hidden, (left, hidden)


class MarkedAdapter:
    """A method whose adapter is two files that must come from the same save (a marker in both)."""

    def save(self, marker: str, path: Path, base_name: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "adapter_model.safetensors").write_text(marker * 50_000)  # slow enough to overlap
        (path / "adapter_config.json").write_text(json.dumps({"marker": marker}))
        return path


def save_many(folder: Path, marker: str) -> None:
    for _ in range(20):
        staged = recipe.stage_adapter(MarkedAdapter(), marker, folder, "base")
        recipe.publish_adapter(staged, folder)


def test_two_processes_saving_the_same_adapter_leave_one_whole_adapter(tmp_path) -> None:
    folder = tmp_path / "runs" / "qv_r8-ours-seed0-00000000"
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=save_many, args=(folder, marker)) for marker in "AB"]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    marker = json.loads((folder / "adapter_config.json").read_text())["marker"]
    assert (folder / "adapter_model.safetensors").read_text() == marker * 50_000
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing staged or aside left


def test_bad_input_through_the_command_line(tmp_path, token_cache) -> None:
    out = cli(tmp_path, token_cache, *TINY_RUN, "trainer.epochs=0")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line == f"error: trainer.epochs=0 is not allowed; use a whole number >= 1  {TRACEBACK_HINT}"
    assert not (tmp_path / "results").exists()


def test_the_default_model_without_hub_says_what_works_here(tmp_path, monkeypatch, capsys) -> None:
    """The real look at the Hub, at an endpoint that refuses at once (what HF_ENDPOINT=http://127.0.0.1:9
    sets at import; test_data looks through a fresh interpreter)."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    monkeypatch.chdir(tmp_path)
    assert run_module("lora_lab.run", ["-m", "rank=4,8,16", f"results_dir={tmp_path}"], monkeypatch) == 2
    out = capsys.readouterr()
    assert "the Hugging Face Hub is unreachable" in out.err and "model=minilm" in out.err
    assert "HF_HUB_OFFLINE=1" in out.err and "Retrying" not in out.err + out.out
    assert not list(tmp_path.iterdir())


def test_an_impl_a_method_does_not_have_is_said_and_recorded(
    tmp_path, token_cache, monkeypatch, capsys
) -> None:
    """A sweep over impl=ours,peft meets rows with one implementation: the run says which one it ran."""
    from lora_lab import config

    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    overrides = [*TINY_RUN, "method=houlsby", "impl=peft", f"results_dir={tmp_path}", "trainer.max_steps=1"]
    record = recipe.run(config.compose([*overrides, f"data.cache_dir={token_cache}"]))
    assert record["impl"] == "ours"
    assert "impl=peft does not apply to method=bottleneck; it runs ours" in capsys.readouterr().out


@pytest.mark.slow
def test_a_setting_the_method_does_not_read_is_said_and_recorded(tmp_path, token_cache, monkeypatch, capsys):
    """A sweep over rank meets a full row: its rank is ignored, in one line and in the record."""
    args = ["-m", *TINY_RUN, "method=full,qv_r8", "rank=4"]
    assert in_process(tmp_path, token_cache, monkeypatch, args) == 0
    assert "method=full does not read rank=4; ignored" in capsys.readouterr().out
    records = {
        r["method"]: r
        for r in map(json.loads, map(Path.read_text, (tmp_path / "results").rglob("runs/*.json")))
    }
    assert records["full"]["not_applicable"] == ["rank"] and "not_applicable" not in records["lora"]


def tiny_fit(tmp_path, token_cache, monkeypatch, *overrides: str) -> dict:
    """One tiny run through recipe.run (LoRA with dropout on), its record."""
    from lora_lab import config

    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    base = [*TINY_RUN, "dropout=0.1", f"results_dir={tmp_path}", "trainer.max_steps=3", "trainer.log_every=1"]
    return recipe.run(config.compose([*base, *overrides, f"data.cache_dir={token_cache}", "force=true"]))


@pytest.mark.slow
@requires_assets
def test_each_seed_setting_changes_only_what_it_governs_and_null_is_the_master_seed(
    tmp_path, token_cache, monkeypatch
) -> None:
    """Null seeds are the master seed, bit for bit (and leave the run's name as it was); each of the three
    changes its own source: the head's and adapters' init, the batches' order, the dropout masks."""
    default = tiny_fit(tmp_path / "a", token_cache, monkeypatch)
    explicit = tiny_fit(
        tmp_path / "b", token_cache, monkeypatch, "init_seed=0", "data_order_seed=0", "dropout_seed=0"
    )
    assert default["seeds"] == explicit["seeds"] == {"init": 0, "data_order": 0, "dropout": 0}
    assert (
        default["train_loss_curve"] == explicit["train_loss_curve"]
        and default["accuracy"] == explicit["accuracy"]
    )
    assert "init_seed" not in json.dumps(default["config"]) or default["config"].get("init_seed") is None
    curves = {
        source: tiny_fit(tmp_path / source, token_cache, monkeypatch, f"{source}_seed=7")["train_loss_curve"]
        for source in ("init", "data_order", "dropout")
    }
    assert all(curve != default["train_loss_curve"] for curve in curves.values())  # each one moves the run
    # the first step sees the same weights and the same batch unless init or order changed: only its dropout
    # masks differ when dropout_seed does, and nothing differs in step 1's batch or weights otherwise
    first = {source: curve[0] for source, curve in curves.items()}
    assert (
        first["init"] != default["train_loss_curve"][0]
        and first["data_order"] != default["train_loss_curve"][0]
    )
