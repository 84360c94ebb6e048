"""The Hydra tree composes: every experiment, every method row, the SLURM and joblib launchers."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from helpers import experiment_folders
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from lora_lab import config, identity, methods, run, schema
from lora_lab.analysis import claims as claims_module
from lora_lab.analysis import runs
from lora_lab.analysis.plan import load_plan


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ],
)
def test_launchers_compose(launcher: str, target: str) -> None:
    cfg = compose_with_hydra(["experiment=imdb_ablation", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target


@pytest.mark.slow
def test_the_ablation_sweeps_the_reference_rows_in_its_order() -> None:
    reference = pd.read_csv(config.EXPERIMENTS_DIR / "imdb_rank_target" / "reference.csv")
    rows = config.sweep_rows("imdb_ablation")
    labels = [methods.row_label(config.compose([f"method={row}"])) for row in rows]
    assert labels == list(reference["Configuration"])


@pytest.mark.parametrize("experiment", ["imdb_ablation", "imdb_cpu"])
def test_ablation_experiments_sweep_the_seven_rows_with_both_impls(experiment: str) -> None:
    cfg = compose_with_hydra([f"experiment={experiment}"])
    sweep = cfg.hydra.sweeper.params
    assert sweep.method.split(",") == config.sweep_rows("imdb_ablation")
    assert sweep.impl.split(",") == list(methods.IMPLS)
    assert cfg.experiment_name.startswith("imdb_rank_target/")


def test_method_rows_carry_the_reference_settings() -> None:
    expected = {
        "head_only": (None, None),
        "qv_r4": ("qv", 4),
        "qv_r8": ("qv", 8),
        "qv_r16": ("qv", 16),
        "attn_r8": ("attn", 8),
        "attn_ffn_r8": ("attn_ffn", 8),
        "full": (None, None),
    }
    for row, (targets, rank) in expected.items():
        cfg = config.compose([f"method={row}"])
        assert cfg.method.targets == targets
        if rank is not None:
            assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.method.lr) == (rank, 2 * rank, 0.1, 3e-4)
    assert config.compose(["method=full"]).method.lr == 2e-5


def test_command_line_rank_overrides_the_row_and_alpha_follows() -> None:
    cfg = config.compose(["method=qv_r4", "rank=16"])
    assert (cfg.rank, cfg.alpha, methods.row_label(cfg)) == (16, 32, "Q+V (r=16)")


def test_llm_experiment_is_qlora_without_full_fine_tuning() -> None:
    cfg = compose_with_hydra(["experiment=imdb_llm"])
    assert (cfg.quant, cfg.trainer.gradient_checkpointing, cfg.model.model_type) == ("nf4", True, "qwen2")
    assert cfg.hydra.sweeper.params.method.split(",") == config.sweep_rows("imdb_ablation")[:-1]


def test_the_learning_rate_setting_a_row_answers_to() -> None:
    assert methods.lr_setting(config.compose(["method=qv_r8"])) == "lora_lr"
    assert methods.lr_setting(config.compose(["method=head_only"])) == "head_lr"
    assert methods.lr_setting(config.compose(["method=full"])) == "full_lr"
    assert methods.lr_setting(config.compose(["method=pissa_attn_ffn_r8"])) == "method.lr"
    assert methods.lr_setting(config.compose(["method=qv_r8", "method.lr=1e-3"])) == "method.lr"


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment", ["imdb_cpu", "imdb_methods_cpu", "imdb_llm_cpu", "imdb_full_cpu", "imdb_methods_bf16"]
)
def test_every_claim_names_a_row_its_study_sweeps(experiment: str) -> None:
    """Each claim of the study (its plan's claims file where a plan governs its folder) names rows as the
    analysis of that folder will name them."""
    cfg = compose_with_hydra([f"experiment={experiment}"])
    records = []
    # every experiment that writes into this study's folder (e.g. a tuned-rate row of its own)
    sharing = [name for name, folder in experiment_folders().items() if folder == cfg.experiment_name]
    for sweep, row in [(e, r) for e in sharing for r in config.sweep_rows(e)]:
        run = config.compose([f"experiment={sweep}", f"method={row}"])
        method = methods.of(run)
        records.append(
            schema.Record(
                name=row,
                experiment=run.experiment_name,
                label=method.label(run),
                method=run.method.kind,
                seed=0,
                model=run.model.name,
                config=identity.resolved(run),
                status="complete",
                impl=method.impl(run),
            )
        )
    names = set(runs.frame(records, experiment)["configuration"])  # as the analysis names the rows
    plan = load_plan(config.CONF_DIR.parent / "results" / cfg.experiment_name)
    path = config.CONF_DIR.parent / plan.claims if plan else None
    claims = claims_module.load_claims(cfg.experiment_name, path)
    named = {label for claim in claims for label in (claim.a, claim.b) if label}
    assert named and named <= names, (named - names, names)


@pytest.mark.parametrize("group", ["model", "method", "experiment", "logger"])
def test_the_readme_names_every_option_of_each_config_group(group: str) -> None:
    """The settings table is where a user learns what `group=` takes: a new file must show there."""
    text = (config.CONF_DIR.parent / "docs" / "configuration.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{group}=` |"))
    files = {p.stem for p in (config.CONF_DIR / group).glob("*.yaml")}
    assert files, f"conf/{group}/ has no options"
    missing = files - set(re.findall(r"`(\w+)`", row))
    assert not missing, "these are missing from docs/configuration.md's table"


def test_multirun_flag_moves_before_the_overrides_and_force_adding_a_real_key_is_an_override() -> None:
    assert run.multirun_first(["rank=4,8", "-m", "seed=1"]) == ["-m", "rank=4,8", "seed=1"]
    assert run.multirun_first(["rank=4"]) == ["rank=4"]
    config.check_additions(["++rank=4", "+model.config.vocab_size=100", "rank=8"])  # none refused
    with pytest.raises(ValueError, match="reads no setting 'trainer.epoch'"):
        config.check_additions(["++trainer.epoch=1"])


@pytest.mark.slow
def test_composing_once_per_choice_of_groups_gives_each_job_its_own_config() -> None:
    """compose_jobs' shortcut, held to composing each job: a sweep over a group and plain values, with an
    interpolation that follows one (alpha: 2 * rank) and a null."""
    arguments = ["method=head_only,qv_r8", "seed=0,3", "rank=4,16", "method.lr=null,1e-2", "lora_lr=3e-3"]
    jobs = config.sweep_jobs(["experiment=smoke", *arguments])
    assert len(jobs) == 16
    for job, cfg in zip(jobs, config.compose_jobs(jobs), strict=True):
        each = config.compose(job)
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(each), job
        assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(each, resolve=True), job


def test_a_job_compose_jobs_cannot_take_a_shortcut_for_is_composed_whole() -> None:
    """An addition is Hydra's to make; a value for a key that is not there gets Hydra's own error."""
    [added] = config.compose_jobs([["experiment=smoke", "+model.local.path=elsewhere"]])
    assert added.model.local.path == "elsewhere"
    with pytest.raises(HydraException, match=r"Could not override 'trainer.epoch'"):
        config.compose_jobs([["experiment=smoke", "seed=1"], ["experiment=smoke", "trainer.epoch=3"]])
