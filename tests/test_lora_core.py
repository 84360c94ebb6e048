"""Merge/unmerge/disable, adapter files both ways with PEFT, target forms, bad inputs, the reference table."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import batch, tiny_model
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from lora_lab import methods, params
from lora_lab.config import CONF_DIR, compose
from lora_lab.dropout import keep_mask
from lora_lab.families import family_of
from lora_lab.lora import (
    LoRALinear,
    LoRASettings,
    apply_lora,
    disable,
    load_adapter,
    lora_layers,
    merge,
    save_adapter,
    unmerge,
)


def adapted(family: str, preset: str = "attn_ffn", **kw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, base + our LoRA with random B and a perturbed head), both in eval mode."""
    base = tiny_model(family).eval()
    fam = family_of(base)
    model = apply_lora(
        copy.deepcopy(base),
        list(fam.targets[preset]),
        rank=4,
        alpha=8,
        modules_to_save=list(fam.lora_modules_to_save),
        **kw,
    ).eval()
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(std=0.1)
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2 and p.shape[0] == 2:  # the 2-label output weight
                p.add_(0.1)
    return base, model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits


def test_fresh_adapter_computes_the_base_model(family: str) -> None:
    base = tiny_model(family).eval()
    model = apply_lora(copy.deepcopy(base), "all-linear", rank=4, alpha=8).eval()
    torch.testing.assert_close(logits(model), logits(base))


def test_merge_unmerge_roundtrip(family: str) -> None:
    _, model = adapted(family)
    weights = {n: layer.base_layer.weight.clone() for n, layer in lora_layers(model)}
    before = logits(model)
    merge(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    assert any(not torch.equal(weights[n], layer.base_layer.weight) for n, layer in lora_layers(model))
    torch.testing.assert_close(logits(model), before, rtol=1e-4, atol=1e-5)
    unmerge(model)
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model), before, rtol=1e-4, atol=1e-5)


def test_merge_in_bf16_keeps_the_weight_dtype() -> None:
    layer = LoRALinear(torch.nn.Linear(16, 8).to(torch.bfloat16), LoRASettings(rank=2, alpha=4))
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    before = layer(x)
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer(x), before, rtol=0.05, atol=0.05)


def test_disable_gives_the_base_outputs(family: str) -> None:
    _, model = adapted(family)
    # modules_to_save train in place, so "the base" here is the model with its LoRA layers switched off.
    head_only = copy.deepcopy(model)
    for _, layer in lora_layers(head_only):
        layer.enabled = False
    assert not torch.allclose(logits(model), logits(head_only))
    with disable(model):
        torch.testing.assert_close(logits(model), logits(head_only))
    merge(model)
    with disable(model):
        torch.testing.assert_close(logits(model), logits(head_only), rtol=1e-4, atol=1e-5)
    assert all(layer.merged and layer.enabled for _, layer in lora_layers(model))


def test_ours_saved_loads_in_peft(family: str, tmp_path) -> None:
    base, model = adapted(family)
    save_adapter(model, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(peft), logits(model), rtol=1e-5, atol=1e-6)


def test_peft_saved_loads_in_ours(family: str, tmp_path) -> None:
    base = tiny_model(family).eval()
    fam = family_of(base)
    peft = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=4,
            lora_alpha=8,
            target_modules=list(fam.targets["attn"]),
            modules_to_save=list(fam.lora_modules_to_save),
        ),
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    peft.eval().save_pretrained(tmp_path / "peft")
    ours = load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(ours), logits(peft), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits(ours), logits(base))


def test_rslora_and_gaussian_init() -> None:
    layer = LoRALinear(
        torch.nn.Linear(64, 64), LoRASettings(rank=16, alpha=8, use_rslora=True, init="gaussian")
    )
    assert layer.scaling == pytest.approx(8 / math.sqrt(16))
    assert layer.lora_A.std().item() == pytest.approx(1 / 16, rel=0.1)
    assert torch.count_nonzero(layer.lora_B) == 0


def test_target_forms() -> None:
    model = tiny_model("distilbert")
    names = {n for n, _ in lora_layers(apply_lora(copy.deepcopy(model), ["q_lin"], rank=2, alpha=4))}
    assert names == {f"distilbert.transformer.layer.{i}.attention.q_lin" for i in range(2)}
    regex = {
        n
        for n, _ in lora_layers(
            apply_lora(copy.deepcopy(model), r".*layer\.1\.attention\.(q|v)_lin", rank=2, alpha=4)
        )
    }
    assert regex == {
        "distilbert.transformer.layer.1.attention.q_lin",
        "distilbert.transformer.layer.1.attention.v_lin",
    }
    every = {n for n, _ in lora_layers(apply_lora(copy.deepcopy(model), "all-linear", rank=2, alpha=4))}
    assert len(every) == 12 and not any("classifier" in n for n in every)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": 33}, "rank=33 exceeds min"),
        ({"alpha": 0}, "alpha must be > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"init": "orthogonal"}, "init must be one of"),
        ({"targets": ["query"]}, r"target module\(s\) \['query'\] not found.*'q_lin'"),
        ({"targets": "nothing.*here"}, "matches no module"),
        ({"targets": ["attention"]}, "select non-linear modules"),
        ({"modules_to_save": ["head"]}, r"modules_to_save \['head'\] not found"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_alone(kwargs: dict, message: str) -> None:
    model = tiny_model("distilbert")
    args = {"targets": ["q_lin", "v_lin"], "rank": 4, "alpha": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **args)
    assert not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_save_refuses_merged_and_plain_models(tmp_path) -> None:
    _, model = adapted("bert")
    merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match="apply_lora first"):
        save_adapter(tiny_model("bert"), tmp_path / "b")
    assert not (tmp_path / "a" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_distilbert_reference_table() -> None:
    """The seven rows of the reference table, built from DistilBertConfig() with no download."""
    rows = params.row_counts(["model=distilbert"])
    expected = [1_538, 665_858, 739_586, 887_042, 887_042, 1_255_682, 66_955_010]
    percents = ["0.00%", "0.99%", "1.10%", "1.32%", "1.32%", "1.88%", "100.00%"]
    for row, trainable, pct in zip(rows, expected, percents, strict=True):
        for impl in ("ours", "peft"):
            assert row[impl] == (trainable, 66_955_010), (row["label"], impl)
            assert f"{100 * row[impl][0] / row[impl][1]:.2f}%" == pct
    assert [r["label"] for r in rows][1] == "Q+V (r=4)"


def test_dropout_down_gradients_match_autograd() -> None:
    from lora_lab.lora.layer import DropoutDown

    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(6, 5) > 0.3
    assert torch.autograd.gradcheck(lambda x, a: DropoutDown.apply(x, keep, a, 1 / 0.7), (x, a))
    plain = ((x * keep / 0.7) @ a.T).sum()
    plain.backward()
    expected = x.grad.clone(), a.grad.clone()
    x.grad, a.grad = None, None
    DropoutDown.apply(x, keep, a, 1 / 0.7).sum().backward()
    torch.testing.assert_close((x.grad, a.grad), expected)


def test_training_forward_with_dropout_is_the_lora_formula() -> None:
    """Replays the layer's own mask draw: y = W0 x + b + s * B A (x * mask / (1 - p))."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8), LoRASettings(rank=4, alpha=8, dropout=0.25)).train()
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 16)
    state = torch.get_rng_state()
    y = layer(x)
    torch.set_rng_state(state)
    keep = keep_mask(torch.Size([6, 16]), 0.25, x.device).view(2, 3, 16)
    expected = layer.base_layer(x) + 2.0 * (x * keep / 0.75) @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(y, expected)
    assert 0.6 < keep.float().mean() < 0.9


def test_lora_dropout_trains_under_bf16_autocast() -> None:
    """The backward of the dropout path runs in the gradient's dtype (bf16 there) and returns fp32 grads."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8), LoRASettings(rank=4, alpha=8, dropout=0.25)).train()
    x = torch.randn(5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad.abs().sum() > 0
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "row",
    sorted(
        p.stem for p in (CONF_DIR / "method").glob("*.yaml") if "nf4" not in p.stem and "qlora" not in p.stem
    ),
)
def test_every_method_declares_what_it_adds_so_the_base_size_stays_the_base(row: str) -> None:
    """The trainable-% denominator is the base model alone: a method whose added parameters' names its `adds`
    does not declare would count them as base weights, silently."""
    cfg = compose([f"method={row}"])
    for impl in methods.of(cfg).impls or (None,):
        if impl:
            cfg.impl = impl
        base = tiny_model("bert")
        size = sum(p.numel() for p in base.parameters())
        assert params.count(methods.prepare(base, cfg))[1] == size, (row, impl)
