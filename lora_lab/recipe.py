"""One run, in named stages: setup (check, settle, name, read the data), prepare (model, method, tokens),
train_and_score (the one loop), persist (adapter, predictions, record), report.

`run(cfg)` is the whole recipe for one composed config; `python -m lora_lab.run` (run.py) is its command
line, which checks the settings before this module (and torch with it) is imported.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from lora_lab import (
    allocator,
    checks,
    config,
    data,
    hardware,
    identity,
    methods,
    models,
    params,
    provenance,
    schema,
    store,
    tracking,
)
from lora_lab.build import build_model
from lora_lab.train import NonFiniteLoss, fit


def settle(cfg: DictConfig) -> None:
    """Resolve the `auto` settings that change what a run computes, in place, before its identity is taken."""
    device = hardware.pick_device(cfg.trainer.device)
    cfg.trainer.device = str(device)  # outside identity; the record says where it ran
    cfg.trainer.precision = hardware.pick_precision(cfg.trainer.precision, device)
    cfg.trainer.cheap_dropout = hardware.pick_cheap_dropout(cfg.trainer.cheap_dropout, device)
    # TF32 exists on CUDA only; null there and off elsewhere, so only a run that used it carries it
    cfg.trainer.tf32 = True if cfg.trainer.tf32 and device.type == "cuda" else None


@dataclasses.dataclass
class Job:
    """A checked, settled config: its run's name, where its record goes, and the data it reads."""

    cfg: DictConfig
    name: str
    path: Path
    train_frame: pd.DataFrame
    eval_frame: pd.DataFrame
    inputs: dict  # the data and weights fingerprints: a finished record counts only if it read the same
    loading: float  # perf_counter when loading began (the record's load_s)


@dataclasses.dataclass
class Prepared:
    """The model with its method applied, the tokenised sets it runs on, and the record so far."""

    model: torch.nn.Module
    method: methods.Method
    tokenizer: PreTrainedTokenizerBase
    train_set: data.Encoded
    eval_set: data.Encoded
    record: dict


def run(cfg: DictConfig) -> dict | None:
    """Train and evaluate one configuration and store its record; None when it was already complete.

    The stages, in order: setup (check, settle, name, read the data), prepare (model, method, tokens),
    train_and_score (the one loop, inside a wandb run when asked), persist (adapter, predictions, record)."""
    job = setup(cfg)
    if job is None:
        return None
    prepared = prepare(job)
    with tracking.wandb_run(cfg, job.name, prepared.record["config"]) as wandb:
        predictions = train_and_score(job, prepared)
        persist(job, prepared, predictions)
        if wandb is not None:
            tracking.log_record(wandb, prepared.record, cfg.trainer.log_every)
    report(job, prepared.record)
    return prepared.record


def setup(cfg: DictConfig) -> Job | None:
    """The config checked and settled, the run named, the data read; None when the run is complete already."""
    checks.check(cfg)
    settle(cfg)
    name = identity.run_name(cfg)
    path = store.run_dir(cfg) / f"{name}.json"
    loading = time.perf_counter()
    train_frame, eval_frame = data.splits(cfg.data, cfg.seed)
    inputs = {
        "data": {"train": data.fingerprint(train_frame), "eval": data.fingerprint(eval_frame)},
        "weights": models.weights_of(cfg.model) if cfg.model.pretrained else None,
    }
    if not cfg.force and store.finished(path, inputs):
        print(f"[lora-lab] {name}: complete already, skipped (force=true reruns it)")
        return None
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    allocator.keep_freed_memory()  # here, not in cli(): a launcher's worker process runs only this
    return Job(cfg, name, path, train_frame, eval_frame, inputs, loading)


def prepare(job: Job) -> Prepared:
    """Model and method first (they check shapes, rank, alpha and targets before any data is tokenised), then
    the tokenised sets, and the record's description of the run."""
    cfg = job.cfg
    tokenizer = models.load_tokenizer(cfg.model)
    seeds = config.seeds_of(cfg)
    torch.manual_seed(seeds["init"])  # the new head's init (and PEFT's adapters'): the same for every method
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id, vocab=len(tokenizer))
    trainable, total = params.count(model)
    train_set, eval_set = (
        data.tokenize(f, tokenizer, cfg.data.max_length, cfg.data.cache_dir, cfg.trainer.progress, cfg.force)
        for f in (job.train_frame, job.eval_frame)
    )
    method = methods.of(cfg)
    model, train_set, eval_set = method.inputs(model, train_set, eval_set, cfg)
    label, impl = method.label(cfg), method.impl(cfg)
    if impl != cfg.impl:  # a sweep over impl=ours,peft meets rows with one implementation, or none
        print(
            f"[lora-lab] {job.name}: impl={cfg.impl} does not apply to method={cfg.method.kind}; it runs "
            f"{impl or 'without an implementation choice'}, and its record says impl={impl}"
        )
    ignored = unread_settings(cfg, method)
    if ignored:  # e.g. a sweep over rank=4,8 meets a full row: said, recorded, and not in its name
        given = ", ".join(f"{key}={cfg[key]}" for key in ignored)
        print(
            f"[lora-lab] {job.name}: method={cfg.method.kind} does not read {given}; ignored (its record "
            "lists it under not_applicable)"
        )
    print(  # flushed: whoever reads the output through a pipe (tee, a launcher's log) sees training begin
        f"[lora-lab] {job.name}: {label}, impl={impl or 'none'}, trainable {trainable:,} of {total:,} "
        f"({100 * trainable / total:.2f}%), {len(train_set)} train / {len(eval_set)} eval examples",
        flush=True,
    )
    resolved = identity.resolved(cfg)
    record = {
        "name": job.name,
        "config_id": identity.config_id(cfg),
        "experiment": cfg.experiment_name,
        "label": label,
        "method": cfg.method.kind,
        "targets": resolved["method"].get("targets"),
        "rank": cfg.rank if "rank" in method.settings else None,
        "impl": impl,
        "seed": cfg.seed,
        "seeds": seeds,
        "model": cfg.model.name,
        "quant": cfg.quant,
        **job.inputs,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "config": resolved,
        **provenance.current(),
        "load_s": time.perf_counter() - job.loading,
        "not_applicable": ignored or None,
    }
    schema.Record.check_fields(record)  # a field outside the schema fails now, not after hours of training
    return Prepared(model, method, tokenizer, train_set, eval_set, record)


def unread_settings(cfg: DictConfig, method: methods.Method) -> list[str]:
    """The method settings this job's overrides (command line or sweep) set that its method does not read
    (impl aside: prepare says which impl ran)."""
    if not HydraConfig.initialized():  # run() called from Python: no overrides to read
        return []
    given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return sorted(k for k in given & set(methods.every_setting()) if k not in method.settings and k != "impl")


def train_and_score(job: Job, prepared: Prepared) -> pd.DataFrame | None:
    """The one training loop, then scoring (merged where the method folds); the record takes the metrics or,
    when the loss stopped being finite, the reason it failed. Returns the predictions of a complete run."""
    cfg, record, model = job.cfg, prepared.record, prepared.model
    seeds = record["seeds"]  # resolved in prepare
    started = time.time()
    try:
        result = fit(
            model,
            prepared.train_set,
            prepared.eval_set,
            cfg.trainer,
            cfg.method.lr,
            seeds["dropout"],
            prepared.tokenizer.pad_token_id,
            order_seed=seeds["data_order"],
            lr_ratios=prepared.method.lr_ratios(model, cfg),
            pad_left=prepared.tokenizer.padding_side == "left" or prepared.method.pads_left(model),
            scoring=prepared.method.merged(model, cfg) if cfg.trainer.merge_eval else nullcontext(),
        )
        record.update(result.metrics(), status="complete")
        scored = prepared.eval_set
        ids = scored.example_ids or [str(i) for i in range(len(scored))]
        predictions = pd.DataFrame({"example_id": ids, "label": scored.labels.numpy(), **result.predictions})
    except NonFiniteLoss as err:
        record.update(status="failed", reason=f"{err}; lower {methods.lr_setting(cfg)} or check the data")
        predictions = None
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["wall_s"] = time.time() - started
    return predictions


def persist(job: Job, prepared: Prepared, predictions: pd.DataFrame | None) -> None:
    """The adapter, the predictions and the record, all or nothing: a full disk or Ctrl-C part way leaves no
    adapter or predictions without their record. The adapter is published last, replacing an older one."""
    cfg, record, path = job.cfg, prepared.record, job.path
    staged = None  # the adapter, written beside its final place until the record is
    try:
        if predictions is not None and cfg.trainer.save_adapter:
            staged = stage_adapter(prepared.method, prepared.model, path.with_suffix(""), cfg.model.name)
            if staged:
                record["adapter_bytes"] = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file())
        if predictions is not None:
            record["predictions"] = store.write_predictions(path, predictions)
            record["collapsed"] = store.collapse(predictions["pred"], predictions["label"])
        store.write(path, schema.Record(**record))
    except BaseException:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
        if "predictions" in record:
            path.with_name(record["predictions"]["file"]).unlink(missing_ok=True)
        raise
    if staged:
        publish_adapter(staged, path.with_suffix(""))


def report(job: Job, record: dict) -> None:
    """The run's one closing line: its accuracy (with a hint when it collapsed) or why it failed."""
    result = f"accuracy {record['accuracy']:.4f}" if record["status"] == "complete" else record["reason"]
    if record.get("collapsed"):
        hint = (
            "expected of tiny runs like experiment=smoke; in a real run, check its learning rate (a "
            "rate too high collapses a run, one too low leaves it at chance): pilot it on data.eval_split=dev"
        )
        result += f" (collapsed: {record['collapsed']}; {hint})"
    print(f"[lora-lab] {job.name}: {record['status']}: {result} -> {job.path}")


def stage_adapter(
    method: methods.Method, model: torch.nn.Module, folder: Path, base_name: str
) -> Path | None:
    """Save what a method keeps (an adapter) into a fresh hidden folder beside `folder`; None when it keeps
    nothing. A fault while saving leaves no folder behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        kept = method.save(model, staged, base_name)
    except BaseException as err:
        shutil.rmtree(staged, ignore_errors=True)
        if not isinstance(err, OSError) and "No space left on device" in str(err):  # PEFT's safetensors
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder.parent)) from err
        raise
    if kept is None:
        shutil.rmtree(staged, ignore_errors=True)
        return None
    return staged


def publish_adapter(staged: Path, folder: Path) -> None:
    """Move a staged adapter to `folder`, replacing an older one. Each step is a rename of a whole folder, so
    two processes publishing the same adapter at once leave one whole adapter, never a mix of both."""
    while True:
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        try:
            folder.replace(old)  # the older adapter aside (onto the empty placeholder)
        except FileNotFoundError:
            pass
        try:
            staged.rename(folder)
            return
        except OSError as err:  # another process put its adapter there in between: move that aside too
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
