"""The LoRA variants against PEFT and against their formulas: DoRA (logits, gradients, 20 AdamW steps, merge,
adapter files both ways, a 4-bit base), PiSSA and OLoRA (the residual base and B A, conversion to a plain
LoRA), LoRA+ (each parameter's learning rate)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, tiny_model
from helpers import (
    ALPHA,
    RANK,
    assert_same_logits_and_gradients,
    make_pair,
    train_losses,
    trainable,
)
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer

from lora_lab import methods, quant
from lora_lab.config import compose
from lora_lab.lora import DoRALinear, LoRASettings, load_adapter, lora_layers, merge, save_adapter, unmerge
from lora_lab.train import optimizer_for


def logits(model: torch.nn.Module, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch(**kw)).logits


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])  # Linear, a decoder, Conv1D (GPT-2)
def test_dora_equals_peft_logits_gradients_and_training(family: str) -> None:
    ours, peft = make_pair(tiny_model(family), "attn_ffn", use_dora=True)
    assert_same_logits_and_gradients(ours, peft)
    ours_losses, peft_losses = train_losses(ours), train_losses(peft)
    assert ours_losses[-1] < ours_losses[0]
    assert ours_losses == pytest.approx(peft_losses, abs=1e-5)


def test_dora_layer_is_its_formula_and_starts_as_the_base() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 6)
    layer = DoRALinear(base, LoRASettings(rank=3, alpha=6))
    x = torch.randn(4, 12)
    w = base.weight.detach()
    torch.testing.assert_close(layer.lora_magnitude.detach(), w.norm(dim=1))
    torch.testing.assert_close(layer(x), base(x))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(1.5)
    s = 2.0
    directed = w + s * layer.lora_B @ layer.lora_A
    expected = (layer.lora_magnitude / directed.norm(dim=1)) * (x @ directed.T) + base.bias
    torch.testing.assert_close(layer(x), expected)
    layer(x).sum().backward()  # the norm is detached: m's gradient is (x W'^T / ||W'||) summed over rows
    torch.testing.assert_close(layer.lora_magnitude.grad, ((x @ directed.T) / directed.norm(dim=1)).sum(0))


def test_dora_merge_and_unmerge() -> None:
    _, model = make_pair(tiny_model("bert"), "attn_ffn", use_dora=True)
    before = logits(model)
    weights = {n: layer.base_layer.weight.clone() for n, layer in lora_layers(model)}
    merge(model)
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-5)
    unmerge(model)
    for name, layer in lora_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-6)


def test_dora_adapter_files_both_ways(tmp_path) -> None:
    base = tiny_model("llama")
    ours, peft = make_pair(base, "attn", use_dora=True)
    save_adapter(ours, tmp_path / "ours")
    in_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(logits(in_peft), logits(ours), rtol=1e-5, atol=1e-6)
    peft.save_pretrained(tmp_path / "peft")
    in_ours = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert all(isinstance(layer, DoRALinear) for _, layer in lora_layers(in_ours))
    torch.testing.assert_close(logits(in_ours), logits(peft), rtol=1e-5, atol=1e-6)


def test_dora_on_a_4bit_base_equals_peft() -> None:
    pytest.importorskip("bitsandbytes")
    base = quant.quantize_nf4(tiny_model("llama", hidden_size=64, intermediate_size=128))
    ours, peft = make_pair(base, "qv", use_dora=True)
    assert all(layer.quantized for _, layer in lora_layers(ours))
    assert_same_logits_and_gradients(ours, peft)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_rewrite_the_base_as_peft_does(init: str) -> None:
    """SVD and QR signs are arbitrary, so B A and the residual W are compared, not A and B."""
    model = tiny_model("bert")
    originals = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("query", "value"))
    }
    ours, peft = make_pair(model, "qv", init=init)
    peft_layers = {
        n.removeprefix("base_model.model."): m for n, m in peft.named_modules() if hasattr(m, "lora_A")
    }
    s = ALPHA / RANK
    for name, layer in lora_layers(ours):
        theirs = peft_layers[name]
        ba = layer.initial_B @ layer.initial_A
        torch.testing.assert_close(layer.base_layer.weight + s * ba, originals[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.base_layer.weight, theirs.base_layer.weight, rtol=1e-5, atol=1e-5)
        u, _, _ = torch.linalg.svd(originals[name])
        if init == "pissa":  # B A spans W's top-r left singular vectors
            projected = u[:, :RANK] @ u[:, :RANK].T @ ba
            torch.testing.assert_close(projected, ba, rtol=1e-4, atol=1e-5)
    assert_same_logits_and_gradients(ours, peft)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_saves_as_a_plain_lora_on_the_original_base(init: str, tmp_path) -> None:
    base = tiny_model("bert")
    ours, peft = make_pair(base, "qv", init=init)  # B perturbed: the adapter has moved from its init
    save_adapter(ours, tmp_path / "ours")
    in_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    assert in_peft.peft_config["default"].r == 2 * RANK
    torch.testing.assert_close(logits(in_peft), logits(ours), rtol=1e-5, atol=1e-5)
    peft.save_pretrained(tmp_path / "peft")  # PEFT's own file replays the init on the original base
    in_ours = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(logits(in_ours), logits(peft), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["gaussian", "pissa"])
def test_the_seeded_redraw_of_a_respects_init(init: str) -> None:
    prepared = {}
    for impl in ("ours", "peft"):
        cfg = compose(["method=qv_r8", f"impl={impl}", f"init={init}", "seed=3"])
        model = methods.prepare(tiny_model("bert"), cfg)
        prepared[impl] = trainable(model, impl)
    a = {k: p for k, p in prepared["ours"].items() if "lora_A" in k}
    for key, p in a.items():
        torch.testing.assert_close(p, prepared["peft"][key], rtol=1e-5, atol=1e-6)
    first = next(iter(a.values()))
    if init == "gaussian":
        assert first.std().item() == pytest.approx(1 / 8, rel=0.25)
    else:  # PiSSA's A is not random: rows of sqrt(S / s) V^T, orthogonal to each other
        gram = first @ first.T
        torch.testing.assert_close(gram, torch.diag(gram.diagonal()), rtol=1e-4, atol=1e-4)


def test_lora_plus_learning_rates_match_peft_grouping() -> None:
    lr, ratio = 1e-3, 16.0
    cfg = compose(["method=attn_r8", f"lora_plus_ratio={ratio}"])
    ours = methods.prepare(tiny_model("bert"), cfg)
    ratios = methods.of(cfg).lr_ratios(ours, cfg)
    peft_model = methods.prepare(tiny_model("bert"), compose(["method=attn_r8", "impl=peft"]))
    rates = {}
    for impl, model, optimizer in (
        (
            "ours",
            ours,
            optimizer_for(ours, lr, 0.0, torch.device("cpu"), ratios),
        ),
        (
            "peft",
            peft_model,
            create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio),
        ),
    ):
        by_tensor = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        rates[impl] = {k: by_tensor[id(p)] for k, p in trainable(model, impl).items()}
    assert rates["ours"] == rates["peft"]
    assert {r / lr for r in rates["ours"].values()} == {1.0, ratio}
    assert all(r == lr * ratio for k, r in rates["ours"].items() if "lora_B" in k)
    assert all(r == lr for k, r in rates["ours"].items() if "lora_A" in k)


def test_variant_rows_are_named_for_what_they_run() -> None:
    cfg = compose(["method=attn_ffn_r8", "use_dora=true", "init=pissa", "lora_plus_ratio=16"])
    assert methods.row_label(cfg) == "All Attention+FFN (r=8, PiSSA, DoRA, LoRA+)"
    assert methods.of(cfg).row(cfg) == "attn_ffn_r8_pissa_dora_loraplus"
    plain = compose(["method=attn_ffn_r8"])
    assert (methods.row_label(plain), methods.of(plain).row(plain)) == (
        "All Attention+FFN (r=8)",
        "attn_ffn_r8",
    )
    qlora = compose(["method=qlora_attn_ffn_r8"])
    assert (methods.row_label(qlora), methods.of(qlora).row(qlora)) == (
        "All Attention+FFN (r=8, NF4 base)",
        "attn_ffn_r8_nf4",
    )


def test_peft_model_for_a_variant_is_built_from_our_settings() -> None:
    model = methods.prepare(tiny_model("bert"), compose(["method=qv_r8", "impl=peft", "use_dora=true"]))
    config = model.peft_config["default"]
    assert (config.use_dora, config.r, config.lora_alpha) == (True, 8, 16)
    assert isinstance(model, PeftModel)


def test_lora_on_a_4bit_base_that_returns_views_equals_peft(bnb_on_avx512_bf16) -> None:
    """A base narrower than bitsandbytes' 64-input blocks (tiny BERT, as in experiment=smoke quant=nf4)
    returns its output as a view that autograd forbids adding into in place; on an AVX512-BF16 CPU,
    bitsandbytes' packed path would fail on such a base in eval mode."""
    ours, peft = make_pair(quant.quantize_nf4(tiny_model("bert")), "qv")
    assert all(layer.quantized for _, layer in lora_layers(ours))
    assert_same_logits_and_gradients(ours, peft)
