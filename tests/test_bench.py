"""The benchmark: its variants are what they claim, and it writes its JSON (timings are never asserted)."""

from __future__ import annotations

import argparse
import json

import torch
from conftest import requires_assets

from lora_lab import bench
from lora_lab.params import count

ARGS = argparse.Namespace(
    model="tiny_bert",
    batch=2,
    seq=16,
    rank=4,
    dropout=0.1,
    quant=None,
    device_type="cpu",
    checkpointing=False,
    cheap_dropout=True,
)


def test_floor_trains_the_head_but_backpropagates_through_the_frozen_stack() -> None:
    model = bench.build(ARGS, "floor")[0]
    assert count(model)[0] == 32 * 2 + 2  # tiny_bert's classifier only
    seen = []
    model.bert.encoder.layer[0].register_full_backward_hook(lambda _m, grad_in, _o: seen.append(grad_in[0]))
    model(**bench.fake_batch(model, ARGS, torch.device("cpu"))).loss.backward()
    assert seen and seen[0] is not None  # the input gradient reached the first layer


@requires_assets
def test_bench_command_writes_every_variant(tmp_path) -> None:
    out = tmp_path / "bench.json"
    bench.main(
        [
            "--model",
            "tiny_bert",
            "--batch",
            "2",
            "--seq",
            "16",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--methods",
            "qv_r8",
            "ia3",
            "houlsby",
            "full",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    variants = {"ours:qv_r8", "peft:qv_r8", "ours:ia3", "peft:ia3", "houlsby", "full"}
    assert set(result["train_step_s"]) == {"floor", *variants}
    merged = {f"{v} merged" for v in variants if v.endswith(("qv_r8", "ia3"))}  # LoRA and IA3 fold in
    assert set(result["inference_s"]) == {"base", *(f"{v} unmerged" for v in variants), *merged}
    assert all(t > 0 for t in result["train_step_s"].values())
