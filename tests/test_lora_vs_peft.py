"""Our LoRA against PEFT's, weight for weight: same logits, same gradients, same 20-step training curve.
(The variants, DoRA, PiSSA, OLoRA and LoRA+, are held to the same in test_lora_variants.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import MINILM, batch, requires_assets, tiny_model
from helpers import assert_same_logits_and_gradients, make_pair, train_losses
from transformers import AutoModelForSequenceClassification

from lora_lab.params import count


@pytest.mark.parametrize("preset", ["qv", "attn_ffn"])
def test_same_logits_and_gradients(family: str, preset: str) -> None:
    assert_same_logits_and_gradients(*make_pair(tiny_model(family), preset))


def test_twenty_steps_same_losses(family: str) -> None:
    ours, peft = make_pair(tiny_model(family), "attn_ffn", dropout=0.0)
    ours_losses, peft_losses = train_losses(ours), train_losses(peft)
    assert ours_losses[-1] < ours_losses[0], "training did not move the loss; the comparison would be vacuous"
    assert ours_losses == pytest.approx(peft_losses, abs=1e-5)


@pytest.mark.parametrize("preset", ["qv", "attn", "attn_ffn"])
def test_trainable_counts_match_peft(family: str, preset: str) -> None:
    ours, peft = make_pair(tiny_model(family), preset)
    assert count(ours) == count(peft)
    assert count(ours)[1] == sum(p.numel() for p in tiny_model(family).parameters())


@requires_assets
@pytest.mark.slow
def test_real_minilm_matches_peft() -> None:
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    ours, peft = make_pair(model, "qv")
    ours.eval(), peft.eval()
    inputs = batch(vocab=30522, length=32)
    torch.testing.assert_close(ours(**inputs).logits, peft(**inputs).logits, rtol=1e-5, atol=1e-5)
    ours_losses, peft_losses = train_losses(ours, steps=5), train_losses(peft, steps=5)
    assert ours_losses == pytest.approx(peft_losses, abs=1e-5)
