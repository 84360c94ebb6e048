"""One training and evaluation loop for every method: AdamW, linear warmup/decay, clipping, bf16 autocast."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from lora_lab.data import Encoded, batches, collate, groups
from lora_lab.hardware import (
    DTYPES,
    autocast,
    gpu_of,
    grad_scaler,
    peak_memory_mb,
    peak_reserved_mb,
    reset_peak_memory,
)
from lora_lab.schema import Gpu


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the run is recorded as failed and the sweep goes on."""


def optimizer_for(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    lr_ratios: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, biases and norms do not. A parameter named in
    `lr_ratios` (a method's `lr_ratios`: LoRA+'s B) learns at lr times its ratio."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ratio_of = {n: (lr_ratios or {}).get(n, 1.0) for n, _ in named}
    groups = []
    for decays in (True, False):
        for ratio in sorted(set(ratio_of.values())):
            members = [p for n, p in named if (p.dim() >= 2) == decays and ratio_of[n] == ratio]
            groups.append(
                {"params": members, "lr": lr * ratio, "weight_decay": weight_decay if decays else 0.0}
            )
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward; non-reentrant, which works with a frozen embedding layer (LoRA)."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    device: torch.device,
    precision: str,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimiser step; returns the loss as a tensor on the device (reading it would wait for the GPU).
    With fp16, `scaler` scales the loss, unscales before clipping, and skips a step whose gradients
    overflowed."""
    scaler = scaler or grad_scaler(device, precision)
    with autocast(device, precision):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@dataclasses.dataclass(frozen=True)
class Fit:
    """What `fit` measured: the run record's metrics (`metrics()`, schema.Record's fields of those names), and
    each evaluation example's prediction, which goes to its own file."""

    accuracy: float
    macro_f1: float
    eval_loss: float
    eval_examples: int
    eval_wall_s: float
    precision: str
    train_loss_curve: list[float]
    steps: int
    train_wall_s: float
    train_examples_per_s: float | None
    train_tokens_per_s: float | None  # the reviews' own tokens
    train_padded_tokens_per_s: float | None  # with the padding each batch computed on
    peak_memory_mb: float
    peak_memory_of: str
    peak_memory_reserved_mb: float | None  # CUDA: what the caching allocator held at its peak
    gpu: Gpu | None
    predictions: dict[str, np.ndarray]  # "pred" (label) and "prob_pos", in the evaluation set's order

    def metrics(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "predictions"}


def fit(
    model: nn.Module,
    train: Encoded,
    evaluation: Encoded,
    cfg: DictConfig,
    lr: float,
    seed: int,
    pad_id: int,
    pad_left: bool = False,
    scoring: AbstractContextManager | None = None,
    order_seed: int | None = None,
    lr_ratios: Mapping[str, float] | None = None,
) -> Fit:
    """Train `model` on `train`, evaluate on `evaluation` inside `scoring` (e.g. the method's merged
    weights); returns the metrics a run record keeps.

    `cfg` is the trainer config. `seed` starts the dropout draws, `order_seed` (default: `seed`) the order of
    the training batches, `lr_ratios` the parameters that learn at a multiple of `lr`. Raises NonFiniteLoss
    when the loss stops being finite; the loss is read (and checked) once per `log_every` steps, so a GPU is
    not made to wait every step.
    """
    if cfg.device == "auto" or cfg.precision not in DTYPES:
        raise ValueError("fit needs a trainer config whose device and precision are resolved (recipe.settle)")
    device, precision = torch.device(cfg.device), cfg.precision
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
    model.to(device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = (
        steps_per_epoch * cfg.epochs
        if cfg.max_steps is None
        else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    )
    optimizer = optimizer_for(model, lr, cfg.weight_decay, device, lr_ratios)
    schedule = linear_schedule(optimizer, round(cfg.warmup_ratio * total), total)
    reset_peak_memory(device)
    torch.manual_seed(seed)  # dropout draws start from the same state for every method and impl
    order = seed if order_seed is None else order_seed  # the batches' order: its own seed, or the dropout's
    trained = train_loop(model, train, cfg, optimizer, schedule, total, order, pad_id, pad_left)
    wall = trained.wall_s
    peak = peak_memory_mb(device)  # training's peak, before scoring adds its own batches
    start = time.perf_counter()
    with scoring or nullcontext():
        metrics = evaluate(
            model, evaluation, cfg.eval_batch_size, pad_id, device, precision, pad_left, cfg.progress
        )
    predictions = metrics.pop("predictions")
    return Fit(
        **metrics,
        eval_wall_s=time.perf_counter() - start,
        precision=precision,
        train_loss_curve=trained.losses,
        steps=trained.steps,
        train_wall_s=wall,
        train_examples_per_s=trained.examples / wall if wall > 0 else None,
        train_tokens_per_s=trained.tokens / wall if trained.tokens and wall > 0 else None,
        train_padded_tokens_per_s=trained.padded / wall if trained.padded and wall > 0 else None,
        peak_memory_mb=peak,
        peak_memory_of="CUDA tensors (max allocated)" if device.type == "cuda" else "process (peak RSS)",
        peak_memory_reserved_mb=peak_reserved_mb(device),
        gpu=gpu_of(device),
        predictions=predictions,
    )


@dataclasses.dataclass(frozen=True)
class Trained:
    """What the loop saw: the logged loss means, the steps taken, and the examples, real tokens and padded
    tokens it trained on, in `wall_s` seconds."""

    losses: list[float]
    steps: int
    examples: int
    tokens: int
    padded: int
    wall_s: float


def train_loop(
    model: nn.Module,
    train: Encoded,
    cfg: DictConfig,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    total: int,
    order: int,
    pad_id: int,
    pad_left: bool,
) -> Trained:
    """`total` optimizer steps over `train` in shuffled batches (epoch e in the order of seed `order` + e),
    the loss averaged over each `log_every` steps; raises NonFiniteLoss when such a mean is not finite."""
    device, precision = torch.device(cfg.device), cfg.precision
    scaler = grad_scaler(device, precision)
    losses, window_sum, window, step, seen, tokens, padded = [], 0.0, 0, 0, 0, 0, 0
    bar = tqdm(total=total, desc="train", unit="step", disable=not cfg.progress, file=sys.stderr)
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        for batch in batches(
            train, cfg.batch_size, pad_id, shuffle=True, seed=order + epoch, pad_left=pad_left
        ):
            if step == total:
                break
            seen += len(batch["labels"])
            if "attention_mask" in batch:  # the probe reads features, not tokens
                tokens += int(batch["attention_mask"].sum())
                padded += batch["attention_mask"].numel()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            window_sum = window_sum + train_step(
                model, batch, optimizer, cfg.grad_clip, device, precision, scaler
            )
            schedule.step()
            step, window = step + 1, window + 1
            if window == cfg.log_every or step == total:
                mean = float(window_sum) / window
                if not math.isfinite(mean):
                    raise NonFiniteLoss(f"loss became {mean} within steps {step - window + 1}-{step}")
                losses.append(mean)
                bar.set_postfix(loss=f"{mean:.4f}", epoch=epoch)
                window_sum, window = 0.0, 0
            bar.update()
    wall = time.perf_counter() - start
    bar.close()
    return Trained(losses, step, seen, tokens, padded, wall)


def in_order(
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    pad_left: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Each batch's example indices and its tensors on `device`, longest first, with a progress bar: how
    scoring (and the probe's one encoding pass) reads a set."""
    order = groups(data, batch_size, shuffle=False)
    for idx in tqdm(order, desc=desc, unit="batch", disable=not progress, file=sys.stderr):
        yield idx, {k: v.to(device) for k, v in collate(data, idx, pad_id, pad_left).items()}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: str = "fp32",
    pad_left: bool = False,
    progress: bool = True,
) -> dict:
    """Accuracy, macro-F1 and mean loss, on length-sorted batches without autograd; "predictions" holds
    each example's predicted label and probability of label 1, in the order of `data`."""
    model.eval()
    n = len(data)
    pred, prob_pos, loss_sum = torch.empty(n, dtype=torch.long), torch.empty(n), 0.0
    for idx, batch in in_order(data, batch_size, pad_id, device, pad_left, progress, "eval"):
        with autocast(device, precision):
            out = model(**batch)
        loss_sum += out.loss.float().item() * len(idx)
        logits = out.logits.float().cpu()
        pred[idx], prob_pos[idx] = logits.argmax(-1), logits.softmax(-1)[:, 1]
    gold = data.labels
    f1s = []
    for c in (0, 1):
        tp = ((pred == c) & (gold == c)).sum().item()
        fp = ((pred == c) & (gold != c)).sum().item()
        fn = ((pred != c) & (gold == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {
        "accuracy": (pred == gold).float().mean().item(),
        "macro_f1": sum(f1s) / len(f1s),
        "eval_loss": loss_sum / n,
        "eval_examples": n,
        "predictions": {"pred": pred.numpy(), "prob_pos": prob_pos.numpy()},
    }
