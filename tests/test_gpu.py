"""On a real GPU, what the CPU tests hold by patching torch's CUDA queries: skipped where CUDA is absent (CI).

`make test-gpu` runs these on a machine with CUDA. LORA_LAB_TEST_DEVICE=cpu runs the bodies that need no GPU
feature on the CPU, to check the tests themselves where no GPU is lent.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import ASSETS, TINY_RUN, requires_assets, tiny_model

from lora_lab import methods, quant, recipe, train
from lora_lab.config import compose
from lora_lab.data import Encoded
from lora_lab.hardware import DTYPES, grad_scaler, pick_precision
from lora_lab.train import evaluate, train_step

DEVICE = os.environ.get("LORA_LAB_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA device (LORA_LAB_TEST_DEVICE=cpu dry-runs)")
on_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device")


def batch_on(device: torch.device, n: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (n, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(n) % 2}
    return {k: v.to(device) for k, v in batch.items()}


@on_cuda
def test_auto_precision_is_what_this_gpu_multiplies_natively() -> None:
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    assert pick_precision("auto", torch.device("cuda")) == ("bf16" if native_bf16 else "fp16")
    assert pick_precision("fp32", torch.device("cuda")) == "fp32"


@requires_assets
def test_a_short_run_on_the_device_records_where_it_ran(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path / "cache"))
    overrides = [f"trainer.device={DEVICE}", f"results_dir={tmp_path / 'results'}"]
    cfg = compose([*TINY_RUN, *overrides])
    record = recipe.run(cfg)
    assert record["status"] == "complete" and np.isfinite(record["eval_loss"])
    assert record["config"]["trainer"]["device"].startswith(DEVICE)
    assert record["precision"] == pick_precision("auto", torch.device(DEVICE))
    if DEVICE == "cuda":
        assert record["gpu"]["name"] == torch.cuda.get_device_name()
        assert record["peak_memory_of"].startswith("CUDA") and record["peak_memory_mb"] > 0
        assert record["peak_memory_reserved_mb"] >= record["peak_memory_mb"]  # the cache holds at least that


@pytest.mark.parametrize(
    "overrides", [["method=attn_ffn_r8"], ["method=attn_ffn_r8", "impl=peft"], ["method=ia3"]]
)
def test_merged_scoring_gives_the_unmerged_predictions_on_the_device(overrides) -> None:
    device = torch.device(DEVICE)
    cfg = compose([*overrides, "model=tiny_bert"])
    method = methods.of(cfg)
    model = methods.prepare(tiny_model("bert"), cfg).to(device)
    with torch.no_grad():  # a trained adapter: every trainable tensor moved off its start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    lengths = torch.randint(4, 12, (24,))
    data = Encoded(
        ids=torch.randint(1, 100, (int(lengths.sum()),), dtype=torch.int32),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        labels=torch.randint(0, 2, (24,)),
    )
    unmerged = evaluate(model, data, 8, 0, device, progress=False)
    with method.merged(model, cfg):
        merged = evaluate(model, data, 8, 0, device, progress=False)
    assert merged["predictions"]["prob_pos"] == pytest.approx(unmerged["predictions"]["prob_pos"], abs=1e-4)


def test_ours_and_peft_train_alike_on_the_device() -> None:
    """Without dropout, our LoRA and PEFT's start alike and take the same steps (fp32, exact matmuls)."""
    device = torch.device(DEVICE)
    curves = {}
    for impl in ("ours", "peft"):
        cfg = compose(["method=qv_r8", "dropout=0", f"impl={impl}"])
        model = methods.prepare(tiny_model("bert"), cfg).to(device)
        optimizer = train.optimizer_for(model, 1e-3, 0.0, device)
        batch = batch_on(device)
        torch.manual_seed(0)
        curves[impl] = [float(train_step(model, batch, optimizer, 1.0, device, "fp32")) for _ in range(5)]
    assert curves["ours"] == pytest.approx(curves["peft"], rel=1e-4)


@on_cuda
def test_fp16_trains_through_the_gradient_scaler_on_the_gpu() -> None:
    device = torch.device("cuda")
    model = tiny_model("bert").to(device)
    optimizer = train.optimizer_for(model, 1e-3, 0.0, device)
    scaler = grad_scaler(device, "fp16")
    batch = batch_on(device)
    losses = [float(train_step(model, batch, optimizer, 1.0, device, "fp16", scaler)) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] and scaler.get_scale() > 0


@on_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_qlora_trains_on_the_gpu_in_the_runs_precision(precision) -> None:
    pytest.importorskip("bitsandbytes")
    device = torch.device("cuda")
    model = quant.quantize_nf4(tiny_model("llama"), compute_dtype=DTYPES[precision]).to(device)
    model = methods.prepare(model, compose(["method=qlora_attn_ffn_r8", "model=tiny_llama"]))
    optimizer = train.optimizer_for(model, 1e-3, 0.0, device)
    batch = batch_on(device)
    losses = [float(train_step(model, batch, optimizer, 1.0, device, precision)) for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
