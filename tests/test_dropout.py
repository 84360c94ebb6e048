"""The cheap-mask dropout: the same formula as plain dropout with its own mask, swapped into whole models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_model

from lora_lab import dropout, lora, methods
from lora_lab.config import compose
from lora_lab.lora import layer
from lora_lab.train import enable_checkpointing


def test_keep_mask_rate_and_reproducibility() -> None:
    """One million draws: the kept share is 1 - p within 5 binomial std (0.0015), in each of the four 15-bit
    lanes of a word, and a reseeded generator repeats the mask."""
    torch.manual_seed(0)
    keep = dropout.keep_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"))
    torch.manual_seed(0)
    assert torch.equal(keep, dropout.keep_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu")))
    assert dropout.effective_dropout(0.1) == pytest.approx(0.1, abs=2**-16)
    lanes = keep.view(-1, 4).float().mean(0)
    torch.testing.assert_close(lanes, torch.full((4,), 0.9), rtol=0, atol=0.003)
    assert abs(keep.float().mean().item() - 0.9) < 0.0015


def test_dropout_layer_is_x_times_mask_over_keep_rate() -> None:
    layer = dropout.Dropout(0.3).train()
    x = torch.randn(4, 7, 5, requires_grad=True)
    state = torch.get_rng_state()
    y = layer(x)
    torch.set_rng_state(state)
    keep = dropout.keep_mask(x.shape, 0.3, x.device)
    torch.testing.assert_close(y, x * keep / (1 - dropout.effective_dropout(0.3)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, keep / (1 - dropout.effective_dropout(0.3)))
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_attention_with_dropout_is_softmax_attention_with_the_replayed_mask(mask_kind: str) -> None:
    module = torch.nn.Module()  # an encoder's attention: not causal, no grouped heads
    module.is_causal = False
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    allowed = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    allowed[0, ..., 4:] = False  # the first sequence has two padding positions
    mask = {
        "bool": allowed,
        "additive": torch.zeros(2, 1, 6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min),
        "none": None,
    }[mask_kind]
    state = torch.get_rng_state()
    out, _ = dropout.attention(module, q, k, v, mask, dropout=0.2, scaling=0.5)
    torch.set_rng_state(state)
    scores = (q @ k.transpose(-2, -1)) * 0.5
    if mask is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(-1)
    keep = dropout.keep_mask(probs.shape, 0.2, probs.device)
    expected = (probs * keep / (1 - dropout.effective_dropout(0.2))) @ v
    torch.testing.assert_close(out, expected.transpose(1, 2))
    # Without dropout it is SDPA itself.
    plain, _ = dropout.attention(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    torch.testing.assert_close(plain, sdpa.transpose(1, 2))


@pytest.mark.parametrize("family", ["bert", "distilbert", "llama"])
def test_installed_model_keeps_eval_outputs_and_trains(family: str) -> None:
    plain = tiny_model(family).eval()
    fast = dropout.install(tiny_model(family)).eval()
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    inputs = batch()
    torch.testing.assert_close(fast(**inputs).logits, plain(**inputs).logits, rtol=0, atol=0)
    fast.train()
    torch.manual_seed(0)
    first = fast(**inputs).loss
    torch.manual_seed(0)
    assert fast(**inputs).loss == first  # the masks come from torch's generator
    first.backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_checkpointing_replays_the_dropout_masks(family: str) -> None:
    """Recomputed forwards must draw the masks they drew the first time, or gradients would be wrong."""
    cfg = compose(["method=attn_ffn_r8"])  # LoRA dropout 0.1 as well as the model's own
    grads = []
    for checkpointing in (False, True):
        model = methods.prepare(dropout.install(tiny_model(family)), cfg).train()
        if checkpointing:
            enable_checkpointing(model)
        torch.manual_seed(1)
        model(**batch()).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("cheap", [True, False])
def test_lora_layers_follow_the_cheap_dropout_setting(monkeypatch, cheap) -> None:
    """On CUDA, cheap_dropout resolves to false: the LoRA layers then leave their masks to torch's dropout."""
    model = lora.use_cheap_dropout(methods.prepare(tiny_model("bert"), compose(["method=qv_r8"])), cheap)
    drawn = []
    monkeypatch.setattr(layer, "keep_mask", lambda *a: drawn.append(a) or dropout.keep_mask(*a))
    model.train()(input_ids=torch.randint(1, 100, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.long))
    assert bool(drawn) == cheap  # four adapted modules draw cheap masks, or none does
