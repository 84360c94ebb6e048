"""The README's "Running experiments" block, run in order as a new user would, on tiny data sizes: each
command must succeed and write what the next one reads. Lines that need the Hub must fail at once, in one
line that says what to do instead."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ASSETS, REPO, requires_assets
from helpers import run_module

from lora_lab import assets

pytestmark = requires_assets

SIZES = ("data.train_size", "data.eval_size", "data.max_length", "trainer.epochs")
TINY = [
    "data.train_size=8",
    "data.eval_size=8",
    "data.max_length=16",
    "trainer.epochs=1",
    "trainer.progress=false",
]
# A study's three seeds and two impls are the same wiring again; the `seeds` line runs both impls (every sweep
# line runs its first seed only, see `shrunk`).
ONE_SEED_ONE_IMPL = ["hydra.sweeper.params.seed=0", "hydra.sweeper.params.impl=ours"]


def readme_commands() -> list[tuple[list[str], str]]:
    """(argv, comment) of each command in the README's first bash block under "Running experiments"."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Running experiments\s+```bash\n(.*?)```", text, re.S).group(1)
    commands = []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        if words and words[0] == "python":
            commands.append((words, comment))
    return commands


def shrunk(words: list[str], comment: str) -> list[str]:
    """A run command with the sizes replaced by tiny ones and a list of seeds by its first (the rest as
    documented)."""
    kept = [w.split(",")[0] if w.startswith("seed=") else w for w in words if not w.startswith(SIZES)]
    study = "-m" in words[3:] and any(w.startswith("experiment=") for w in words) and "Hub" not in comment
    return kept + TINY + (ONE_SEED_ONE_IMPL if study else [])


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys) -> None:
    """Each `python -m MODULE ...` line in this process (the same entry point, without an interpreter's start
    each); the line that needs the Hub with the Hub unreachable (test_run makes the real probe of a refusing
    endpoint through the same command line, test_data through a fresh interpreter)."""
    commands = readme_commands()
    assert len(commands) >= 8, "the README's block of commands went missing"
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))  # the block's `export` line, as an absolute path
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    analysed = []
    for words, comment in commands:
        if words[:3] == ["python", "-m", "lora_lab.run"]:
            words = shrunk(words, comment)
        assert words[1] == "-m", words
        if "Hub" in comment:
            with monkeypatch.context() as offline:
                offline.setattr(assets, "unreachable", lambda url: "no Hub in this test")
                assert run_module(words[2], words[3:], monkeypatch) == 2, words
            err = capsys.readouterr().err
            assert "the Hugging Face Hub is unreachable" in err and "model=minilm" in err
            continue
        assert run_module(words[2], words[3:], monkeypatch) == 0, words
        if words[2] == "lora_lab.analysis":
            folder = tmp_path / words[3]
            assert (folder / "table.md").is_file() and (folder / "acc_vs_params.png").is_file()
            analysed.append(words[3])
    assert len(analysed) == 3


# Where the commands a user copies are: the README, docs/, and each experiment's and study's README.
DOCUMENTED = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "experiments").glob("*/README.md")),
    *sorted((REPO / "results").glob("*/*/README.md")),
]
PLACEHOLDER = re.compile(r"[$<>]|^[A-Z_]+$")  # $ROWS, <variant>, OUT


def documented_runs() -> list[list[str]]:
    """The arguments of every `python -m lora_lab.run` line in a bash block of DOCUMENTED (continued lines
    joined, comments dropped), once each; lines with a placeholder to fill in are left out."""
    runs: dict[tuple[str, ...], None] = {}
    for path in DOCUMENTED:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), re.S):
            for line in map(str.strip, re.sub(r"\\\n\s*", " ", block).splitlines()):  # blocks in lists indent
                if not line.startswith("python -m lora_lab.run "):
                    continue
                words = shlex.split(line.partition(" #")[0])
                if not any(map(PLACEHOLDER.search, words)):
                    runs.setdefault(tuple(words[3:]), None)
    return [list(words) for words in runs]


@pytest.mark.parametrize("arguments", documented_runs(), ids=lambda words: " ".join(words)[:80])
def test_each_documented_run_passes_the_runners_checks(arguments) -> None:
    """Cheap guard beside the slow walkthrough: every job of every documented command composes (its overrides
    are real settings, added with + where Hydra needs it) and passes the settings checks, as the runner checks
    them before it trains (model shapes aside: some name a Hub model)."""
    from lora_lab import checks, config, run

    argv = run.multirun_first(arguments)
    overrides = run.overrides_of(argv)
    config.check_additions(overrides)
    jobs = config.sweep_jobs(overrides) if "-m" in argv else [config.without_hydra(overrides)]
    for cfg in config.compose_jobs(jobs):
        checks.check(cfg)


def test_the_documented_runs_are_found() -> None:
    runs = documented_runs()
    assert len(runs) >= 20 and ["experiment=smoke", "results_dir=outputs"] in runs
