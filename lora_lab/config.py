"""The Hydra config tree in conf/: where it lives, its resolvers, composing it, and checking values."""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:  # schema imports the method registry, which imports this module
    from lora_lab.schema import Seeds

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS_DIR = CONF_DIR.parent / "experiments"  # one folder per study, with its reference numbers

# Mistakes a user can make on the command line or in a config: one line and exit code 2, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException)
SHOW_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"  # read before the runner sets it for Hydra

# alpha defaults to 2 * rank: `alpha: ${mul:2,${rank}}` in config.yaml.
if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", lambda a, b: a * b)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m lora_lab.run <overrides>` would see, without running anything."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


GROUPS = frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir())  # model, method, experiment, ...


def _is_group(override: Override) -> bool:
    """Whether an override chooses a config group (method=qv_r8, hydra/launcher=ray), not a value."""
    return override.package is not None or override.key_or_group.split("/")[0] in GROUPS


def compose_jobs(jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Each job's config as `compose(job)` gives it, composed once per choice of config groups: a sweep's
    jobs mostly differ in plain values (seed, rank, lora_lr), which are set on a copy of their choice's config
    in order, as Hydra sets them after composing. A job that adds or deletes keys is composed whole, and so is
    one with a value for a key that is not there, so that Hydra's own error names it."""
    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], DictConfig] = {}
    out = []
    for job in jobs:
        overrides = parser.parse_overrides(list(job))
        groups = tuple(o.input_line for o in overrides if _is_group(o))
        values = [o for o in overrides if not _is_group(o)]
        if any(o.is_delete() or o.is_add() or o.is_force_add() for o in values):
            out.append(compose(job))
            continue
        if groups not in composed:
            composed[groups] = compose(groups)
        cfg = copy.deepcopy(composed[groups])
        try:
            for override in values:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:
            cfg = compose(job)
        out.append(cfg)
    return out


def sweep_rows(experiment: str) -> list[str]:
    """The method rows (conf/method/ names) an experiment sweeps, in its order: a study's row list lives
    in its experiment file only."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return str(cfg.hydra.sweeper.params.method).split(",")


def sweep_jobs(arguments: Sequence[str]) -> list[list[str]]:
    """The overrides of each job a multirun of `arguments` launches, split as Hydra's basic sweeper splits
    them (the experiment's `hydra.sweeper.params` first, the command line's after), without Hydra's own
    settings: what lets a sweep check every job before its first one starts."""
    parser = OverridesParser.create()
    plain = [o.input_line for o in parser.parse_overrides(list(arguments)) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=plain, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *arguments]), None)
    return [without_hydra(job) for batch in batches for job in batch]


def without_hydra(overrides: Sequence[str]) -> list[str]:
    """The overrides a run's own config reads: Hydra's settings (`hydra.*`, `hydra/launcher=...`) left out."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


def setting_names() -> list[str]:
    """Every dotted key of the default config, e.g. trainer.epochs: what a `key=value` override may set."""

    def walk(node: object, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [name for key, value in node.items() for name in walk(value, f"{prefix}{key}.")]

    tree = OmegaConf.to_container(compose(), resolve=False)
    return [name.rstrip(".") for name in walk(tree, "")]


PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # trainer.precision (hardware.pick_precision resolves auto)

# Keys a module reads that a config file may leave out, so `+key=...` may add them; any other `+` addition
# is a key nothing reads (often a misspelt one, as Hydra's own hint suggests): it would change nothing but
# the run's name.
ADDABLE = (
    "model.gguf_file",
    "model.local",
    "model.tokenizer",
    "model.config",
    "model.model_type",
    "data.local",
)


def check_additions(arguments: list[str]) -> None:
    """Refuse `+key=value` for a key no module reads, naming the closest real setting; `++key=value` (add or
    override) is fine for a key that exists."""
    for argument in arguments:
        key = argument.split("=", 1)[0]
        name = key.lstrip("+~")
        if key == name or name.startswith("hydra") or addable(name):
            continue
        if key.startswith("++") and name in setting_names():
            continue
        raise ValueError(f"{key}: {unknown_setting(name)}")


def addable(name: str) -> bool:
    """Whether `+name=...` adds a key a module reads: one of ADDABLE, or a key inside one (model.config.*)."""
    return any(name == a or name.startswith(f"{a}.") for a in ADDABLE)


def unknown_setting(name: str) -> str:
    """Why `name=...` is refused, with the closest real setting (the default config is composed only here, on
    the way to a refusal)."""
    close = difflib.get_close_matches(name, setting_names(), n=1)
    hint = f"did you mean {close[0]}=...?" if close else "docs/configuration.md lists the settings"
    return f"lora-lab reads no setting {name!r}, so it would change nothing; {hint}"


def hydra_message(err: BaseException) -> str | None:
    """Hydra's own words where they mislead, rewritten: it suggests `+key=value` for a key that is not in the
    config, which the runner then refuses unless the key is one a module reads (model.config.*, ...)."""
    overridden = re.match(r"Could not override '([^']+)'", str(err))
    if overridden and not addable(overridden.group(1)):
        return f"{overridden.group(1)}: {unknown_setting(overridden.group(1))}"
    return None


SEED_SOURCES = ("init", "data_order", "dropout")  # each has a setting `<source>_seed`, null meaning `seed`


def seeds_of(cfg: DictConfig) -> Seeds:
    """The seed of each source of randomness (SEED_SOURCES), resolved: its setting, or the master `seed`."""

    def own(source: str) -> int:
        value = cfg.get(f"{source}_seed")
        return cfg.seed if value is None else value

    return {"init": own("init"), "data_order": own("data_order"), "dropout": own("dropout")}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, setting: str, value: object, expected: str) -> None:
    """Raise the one-line user error `setting=value: use <expected>` unless `ok`."""
    if not ok:
        raise ValueError(f"{setting}={value!r} is not allowed; use {expected}")


def fail(err: BaseException) -> None:
    """Exit with code 2 and the error on one line; the traceback when the user set HYDRA_FULL_ERROR=1."""
    if SHOW_TRACEBACK:
        raise err
    if isinstance(err, MissingConfigException) and err.options:  # e.g. model=nope
        message = f"{str(err).splitlines()[0]}; choose one of: {', '.join(err.options)}"
    elif rewritten := hydra_message(err):  # e.g. trainer.epoch=1
        message = rewritten
    elif isinstance(err, OverrideParseException):  # e.g. rank=[
        message = f"cannot parse the override {err.override!r}: {err.message.splitlines()[0]}"
    else:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"error: {message}  (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the tools (bench, cost, analysis), with errors as the runner gives them: one line, exit
    code 2, no usage dump (`--help` shows it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}  ({self.prog} --help shows the usage)", file=sys.stderr)
        sys.exit(2)
