"""The command line of one run or a sweep: config in, one run record out (the stages: recipe.py).

python -m lora_lab.run experiment=smoke
python -m lora_lab.run -m rank=4,8,16 model=minilm data.train_size=200 data.eval_size=200

Every setting is checked (checks.py) before the training pipeline, torch and transformers are imported, so a
bad value prints its one line in about a second.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_lab import checks, config
from lora_lab.config import USER_ERRORS, fail


@hydra.main(config_path=str(config.CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:  # caught here too: Hydra would add a line of its own to an error leaving a job
        checks.check(cfg)
        from lora_lab import (  # torch and transformers: only for settings that passed
            models,
            provenance,
            recipe,
        )

        provenance.current()  # pin the git commit to the code this process imported
        models.quiet_libraries()
        record = recipe.run(cfg)
    except (*USER_ERRORS, OSError) as err:
        refuse(err)
    return record.get("accuracy") if record else None


def refuse(err: BaseException) -> None:
    """One line and exit 2 for what the user can fix (bad input, a full disk); anything else goes on up."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        near = next((p for p in Path(err.filename or ".").parents if p.is_dir()), None)  # what still exists
        fix = "free some, then run the same command again (this run kept nothing; finished runs stay)"
        fail(OSError(f"no space left on the device{f' writing into {near}' if near else ''}: {fix}"))
    if not isinstance(err, USER_ERRORS):
        raise err
    fail(err)


def check_sweep(jobs: list[list[str]]) -> None:
    """Every job's settings, then its data against its model's shapes (from each model's config, read once),
    before the first job trains."""
    composed = config.compose_jobs(jobs)
    for cfg in composed:
        checks.check(cfg)
    from lora_lab.models import load_config  # transformers: only once every job's settings passed

    shapes: dict[str, object] = {}
    for cfg in composed:
        key = OmegaConf.to_yaml(cfg.model)
        if key not in shapes:
            shapes[key] = load_config(cfg.model)
        checks.check_shapes(shapes[key], cfg)


def multirun_first(argv: list[str]) -> list[str]:
    """`-m` moved before the overrides: Hydra's parser takes the overrides as one run of arguments, so a `-m`
    after them would leave the rest unparsed (a usage dump)."""
    for arg in argv:
        if arg.startswith(("-m=", "--multirun=")):
            raise ValueError(f"{arg}: -m (--multirun) takes no value; write -m alone, e.g. -m rank=4,8,16")
    flags = [a for a in argv if a in ("-m", "--multirun")]
    return [*flags[:1], *(a for a in argv if a not in flags)]


def overrides_of(argv: list[str]) -> list[str]:
    """The overrides, key=value (or ~key); what else is left is Hydra's flags and their values (--cfg job)."""
    return [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def cli() -> None:
    """`python -m lora_lab.run`: Hydra's main with user errors as one line on stderr and exit code 2.

    HYDRA_FULL_ERROR=1 is set for Hydra so that its own errors (bad overrides, unknown groups) reach this
    function instead of Hydra's multi-line report. The settings are checked before Hydra's main, which
    composes the config twice (once to read its mode) before the run's own check could refuse a bad value."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # hydra/launcher=ray: no usage report home
    try:
        sys.argv = [sys.argv[0], *multirun_first(sys.argv[1:])]
        arguments = overrides_of(sys.argv[1:])
        config.check_additions(arguments)
        if {"-m", "--multirun"} & set(sys.argv[1:]):  # every job's settings, before hours of the first ones
            check_sweep(config.sweep_jobs(arguments))
        elif arguments == sys.argv[1:]:  # one run, no Hydra flag (--cfg, --help): its settings, before Hydra
            checks.check(config.compose(config.without_hydra(arguments)))
        main()
    except (*USER_ERRORS, OSError) as err:
        refuse(err)
    except KeyboardInterrupt:  # records and predictions are written atomically: nothing half-written stays
        print("interrupted: the run in progress left no record; the same command resumes", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
