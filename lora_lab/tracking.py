"""wandb beside the run store: each run as a wandb run (config, loss curve, summary), online or offline.

The record in the run store is the source of truth; wandb mirrors it for dashboards (`wandb sync` uploads an
offline run later, and `python -m lora_lab.analysis --source wandb` reads the runs back).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def wandb_logged_in() -> bool:
    import wandb  # imported here: slow to import, and only wandb runs need it

    return bool(wandb.login(prompt=False, verify=False))


@contextmanager
def wandb_run(cfg: DictConfig, name: str, config: dict) -> Iterator[object | None]:
    """A wandb run for this job when `logger.wandb` (`config`: the resolved settings it shows), finished on
    exit; offline when not logged in."""
    if not cfg.logger.wandb:
        yield None
        return
    import wandb

    mode: Any = cfg.logger.mode or ("online" if wandb_logged_in() else "offline")
    folder = Path(cfg.results_dir) / cfg.experiment_name
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=name,
        config=config,
        dir=str(folder),
        mode=mode,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),  # our own line says where an offline run is
    )
    if mode == "offline":
        print(f"[lora-lab] wandb offline run: {run.dir.removesuffix('/files')} (wandb leet / wandb sync)")
    try:
        yield run
    finally:
        run.finish()


def log_record(run: Any, record: dict, log_every: int) -> None:
    """The record's loss curve as wandb steps, and its scalar fields as the run's summary."""
    for step, loss in enumerate(record.get("train_loss_curve") or []):
        run.log({"train/loss": loss}, step=step * log_every)
    scalars = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and k != "config"}
    run.summary.update(scalars)
