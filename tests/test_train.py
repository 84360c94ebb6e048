"""Pieces of the training loop: the schedule, the metrics, per-run peak memory, scoring merged."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from lora_lab import methods, quant
from lora_lab.config import compose
from lora_lab.data import Encoded
from lora_lab.hardware import DTYPES, gpu_of, grad_scaler, pick_precision
from lora_lab.train import evaluate, fit, linear_schedule, train_step


def test_linear_warmup_then_decay_to_zero() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_schedule(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


class Constant(torch.nn.Module):
    """Predicts class 1 for every example whose first token is odd."""

    def forward(self, input_ids, attention_mask, labels):
        logits = torch.stack([torch.zeros(len(input_ids)), (input_ids[:, 0] % 2).float() * 10], dim=1)
        return type("Out", (), {"logits": logits, "loss": torch.nn.functional.cross_entropy(logits, labels)})


def test_evaluate_accuracy_and_macro_f1() -> None:
    ids = torch.tensor([1, 3, 2, 4, 5], dtype=torch.int32)  # predictions 1, 1, 0, 0, 1
    data = Encoded(ids=ids, offsets=torch.arange(6), labels=torch.tensor([1, 0, 0, 0, 1]))
    metrics = evaluate(Constant(), data, batch_size=2, pad_id=0, device=torch.device("cpu"), progress=False)
    assert metrics["accuracy"] == pytest.approx(0.8)
    # class 1: tp 2, fp 1, fn 0 -> 0.8; class 0: tp 2, fp 0, fn 1 -> 0.8
    assert metrics["macro_f1"] == pytest.approx(0.8) and metrics["eval_examples"] == 5


PEAK_CHILD = """
import torch
from lora_lab.hardware import peak_memory_mb, reset_peak_memory
# 384 MB in 64 KB tensors: glibc keeps chunks this small on its heap after they are freed, so the reset
# must hand them back to the OS before it starts the new peak (one big tensor would be unmapped anyway).
chunks = [torch.ones(16_000) for _ in range(6_000)]
keep = chunks[-1]  # the last chunk stays live, so the heap's top cannot shrink on its own
del chunks
high = peak_memory_mb(torch.device("cpu"))
reset_peak_memory(torch.device("cpu"))
print(high, peak_memory_mb(torch.device("cpu")))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak reset needs Linux /proc")
def test_peak_memory_is_per_run_after_a_reset() -> None:
    """In a fresh process: in the test session's own, memory freed by earlier tests (a 135M-parameter
    model) may hold the 400 MB without raising the peak."""
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, check=True)
    high, after = map(float, out.stdout.split())
    assert after < high - 300


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=attn_ffn_r8"],
        ["method=attn_ffn_r8", "impl=peft"],
        ["method=dora_attn_ffn_r8"],
        ["method=ia3"],
        ["method=ia3", "impl=peft"],
        ["method=prompt_tuning"],
    ],
    ids=lambda o: " ".join(o),
)
def test_scoring_merged_gives_the_unmerged_predictions_and_leaves_the_trained_model(overrides) -> None:
    cfg = compose(overrides)
    method = methods.of(cfg)
    model = methods.prepare(tiny_model("bert"), cfg)
    with torch.no_grad():  # a trained adapter: every trainable tensor moved off its start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = 24
    lengths = torch.randint(4, 12, (n,))
    data = Encoded(
        ids=torch.randint(1, 100, (int(lengths.sum()),), dtype=torch.int32),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        labels=torch.randint(0, 2, (n,)),
    )
    score = lambda: evaluate(model, data, 8, 0, torch.device("cpu"), progress=False)  # noqa: E731
    unmerged = score()
    with method.merged(model, cfg):
        merged = score()
    assert merged["predictions"]["prob_pos"] == pytest.approx(unmerged["predictions"]["prob_pos"], abs=1e-5)
    assert merged["eval_loss"] == pytest.approx(unmerged["eval_loss"], abs=1e-5)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)


@pytest.mark.parametrize(
    ("capability", "forced", "expected"),
    [((8, 0), "auto", "bf16"), ((9, 0), "auto", "bf16"), ((7, 5), "auto", "fp16"), ((7, 0), "auto", "fp16")]
    + [((8, 0), "fp32", "fp32"), ((7, 5), "bf16", "bf16")],
)
def test_auto_precision_on_a_gpu_follows_what_it_multiplies_natively(
    monkeypatch, capability, forced, expected
) -> None:
    """The CUDA queries patched: torch's own is_bf16_supported() says True on a T4 (7.5) by emulation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: including_emulation or capability >= (8, 0),
    )
    assert pick_precision(forced, torch.device("cuda")) == expected


@pytest.mark.parametrize("native", [True, False])
def test_forced_bf16_on_a_cpu_that_emulates_it_says_so(monkeypatch, native) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pick_precision("bf16", torch.device("cpu")) == "bf16"  # kept: the user asked for it
    assert any("bf16 is emulated" in str(w.message) for w in caught) is not native
    assert pick_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")


def test_fp16_trains_through_the_gradient_scaler() -> None:
    torch.manual_seed(0)
    model = tiny_model("bert")
    batch = {
        "input_ids": torch.randint(1, 100, (8, 12)),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
        "labels": torch.randint(0, 2, (8,)),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = grad_scaler(torch.device("cpu"), "fp16")
    assert scaler.is_enabled() and not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    losses = [
        float(train_step(model, batch, optimizer, 1.0, torch.device("cpu"), "fp16", scaler)) for _ in range(8)
    ]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert scaler.get_scale() > 0  # the scale the steps ran under (halved on any overflow, never zero)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_4bit_base_computes_in_the_runs_precision(precision) -> None:
    pytest.importorskip("bitsandbytes")
    model = quant.quantize_nf4(tiny_model("llama"), compute_dtype=DTYPES[precision])
    dtypes = {m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")}
    assert dtypes == {DTYPES[precision]}


def test_a_gpu_run_names_its_gpu(monkeypatch) -> None:
    props = type("Props", (), {"name": "NVIDIA A100-SXM4-40GB", "major": 8, "minor": 0})()
    props.total_memory = 40 * 2**30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    gpu = gpu_of(torch.device("cuda"))
    assert gpu["name"] == "NVIDIA A100-SXM4-40GB" and gpu["capability"] == "8.0"
    assert gpu["memory_gb"] == 40.0 and gpu["cuda"] == torch.version.cuda
    assert gpu_of(torch.device("cpu")) is None


def test_every_field_fit_measures_has_a_place_in_the_record() -> None:
    """A metric added to Fit but not to schema.Record would fail the run's write after hours of training."""
    from lora_lab import schema, train

    measured = {f.name for f in dataclasses.fields(train.Fit)} - {"predictions"}
    assert measured <= {f.name for f in dataclasses.fields(schema.Record)}


def test_tokens_per_second_count_the_reviews_own_tokens_and_apart_the_padding() -> None:
    """Reviews of one length need no padding: both rates agree. Uneven ones pad each batch to its longest,
    at least 60 tokens computed for 48 real ones however the batches are drawn."""
    cfg = compose(
        ["model=tiny_bert", "trainer.device=cpu", "trainer.precision=fp32", "trainer.progress=false"]
    )
    cfg.trainer.batch_size = 4
    records = {}
    for name, lengths in (("even", [6] * 8), ("uneven", [2, 10, 3, 9, 4, 8, 5, 7])):
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]))
        data = Encoded(
            ids=torch.arange(5, 5 + sum(lengths)) % 90 + 5, offsets=offsets, labels=torch.arange(8) % 2
        )
        records[name] = fit(tiny_model("bert"), data, data, cfg.trainer, 1e-3, 0, pad_id=0)
    even, uneven = records["even"], records["uneven"]
    assert even.train_padded_tokens_per_s == pytest.approx(even.train_tokens_per_s)
    assert uneven.train_padded_tokens_per_s > 1.2 * uneven.train_tokens_per_s
    assert even.peak_memory_reserved_mb is None and even.peak_memory_of == "process (peak RSS)"
