"""Run names (equal for runs that compute the same thing, different otherwise) and the record schema."""

from __future__ import annotations

import pytest
from helpers import experiment_folders

from lora_lab import config, identity, provenance, schema


def name(*overrides: str) -> str:
    return identity.run_name(config.compose(list(overrides)))


@pytest.mark.slow
def test_lora_settings_do_not_split_head_only_and_full_runs() -> None:
    for row in ("head_only", "full"):
        assert name(f"method={row}", "impl=ours") == name(
            f"method={row}", "impl=peft", "rank=16", "dropout=0"
        )
        assert name(f"method={row}").startswith(f"{row}-none-seed0-")
    for row, alias in (("head_only", "head_lr"), ("full", "full_lr")):
        assert name(f"method={row}", f"{alias}=1e-2") == name(f"method={row}", "method.lr=1e-2")
        assert name(f"method={row}", f"{alias}=1e-2") != name(f"method={row}")


@pytest.mark.slow
def test_lora_runs_differ_by_impl_rank_seed_and_data_but_not_by_display_settings() -> None:
    base = name("method=qv_r8")
    assert base.startswith("qv_r8-ours-seed0-")
    others = {
        name("method=qv_r8", "impl=peft"),
        name("method=qv_r8", "rank=4"),
        name("method=qv_r8", "seed=1"),
        name("method=qv_r8", "data.train_size=100"),
        name("method=qv_r8", "lora_lr=1e-3"),
    }
    assert base not in others and len(others) == 5
    assert name("method=qv_r8", "trainer.progress=false", "force=true", "logger=wandb") == base


@pytest.mark.slow
def test_where_files_are_found_is_not_identity_and_new_null_settings_change_nothing() -> None:
    base = name("method=qv_r8")
    assert name("method=qv_r8", "data.cache_dir=/elsewhere", "model.local.path=other/folder") == base
    assert name("method=qv_r8", "trainer.device=cpu", "trainer.num_threads=2") == base
    assert name("method=qv_r8", "+model.gguf_file=null") == base  # an option added later, left null
    assert name("method=qv_r8", "trainer.precision=bf16") != name("method=qv_r8", "trainer.precision=fp32")
    assert name("method=qv_r8", "trainer.cheap_dropout=true") != name(
        "method=qv_r8", "trainer.cheap_dropout=false"
    )


def test_config_id_is_shared_by_seeds_only() -> None:
    def config_id(*overrides: str) -> str:
        return identity.config_id(config.compose(list(overrides)))

    assert config_id("seed=0") == config_id("seed=1")
    assert config_id("seed=0") != config_id("lora_lr=1e-4")
    cfg = config.compose(["seed=3"])
    record = schema.Record(
        name="x",
        experiment="e",
        label="l",
        method="lora",
        seed=3,
        model="m",
        config=identity.resolved(cfg),
        status="complete",
    )
    assert record.id_of_config() == identity.config_id(cfg)  # computed from the stored config alike


# Studies run as several sweeps of one experiment, each with overrides of its own on the command line.
EXTRA_SWEEPS = {  # experiments/imdb_seed_sources/sweep.sh: one source at a time over 0-5
    "imdb_seed_sources": [[f"{source}_seed=0,1,2,3,4,5"] for source in config.SEED_SOURCES],
}


def sweep_names(experiment: str, extra: list[str]) -> set[str]:
    """The run names a sweep of `experiment` with `extra` on its command line composes."""
    jobs = config.sweep_jobs([f"experiment={experiment}", *extra])
    return {identity.run_name(cfg) for cfg in config.compose_jobs(jobs)}


@pytest.mark.slow
def test_each_studys_committed_records_keep_the_names_its_sweep_composes() -> None:
    """A change to the configs or the identity that would make a study rerun its finished runs fails here."""
    composed: dict[str, set[str]] = {}  # a results folder: the names its experiments' sweeps compose
    committed: dict[str, set[str]] = {}  # a results folder: the names of its committed records
    for experiment, folder in experiment_folders().items():
        runs = config.CONF_DIR.parent / "results" / folder / "runs"
        committed[folder] = {p.stem for p in runs.glob("*.json")}
        if not committed[folder]:
            continue  # nothing committed that a rename could orphan: skip its sweep's composes
        for extra in EXTRA_SWEEPS.get(experiment, [[]]):
            composed.setdefault(folder, set()).update(sweep_names(experiment, extra))
    for folder, names in composed.items():
        assert committed[folder] <= names, (folder, sorted(committed[folder] - names))
    assert len(composed) >= 5  # imdb_rank_target (and its lr pilot), imdb_methods (and its lr pilot), ...


def test_fields_outside_the_schema_are_named() -> None:
    schema.Record.check_fields(["name", "accuracy", "data", "load_s"])
    with pytest.raises(ValueError, match=r"unknown record fields \['acuracy'\]: add them to schema.Record"):
        schema.Record.check_fields(["name", "acuracy"])


def test_the_machine_names_its_cpu_model(tmp_path) -> None:
    """Two hosts alike in cores and bf16 support are told apart by the CPU's model name (the first core's)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9\nflags\t\t: fpu\n\nprocessor\t: 1\n")
    assert provenance.cpu_model(cpuinfo) == "Example CPU 9"
    assert provenance.cpu_model(tmp_path / "absent") is None
    machine = provenance.current()["machine"]
    model = provenance.cpu_model()
    assert machine.endswith(" bf16") and (model is None or f", {model}, " in machine)
