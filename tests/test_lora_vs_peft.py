"""Our LoRA against PEFT's, weight for weight: same logits, same gradients, same 20-step training curve.
(The variants, DoRA, PiSSA, OLoRA and LoRA+, are held to the same in test_lora_variants.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MINILM, batch, requires_assets, tiny_model
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

from lora_lab.families import family_of
from lora_lab.lora import apply_lora
from lora_lab.params import count

RANK, ALPHA = 4, 8


def make_pair(
    model: torch.nn.Module, preset: str, dropout: float = 0.0, use_dora: bool = False, init: str = "kaiming"
) -> tuple[torch.nn.Module, PeftModel]:
    """The same base wrapped by ours and by PEFT, with PEFT's A, a random (non-zero) B and, for DoRA, a
    perturbed magnitude copied into ours."""
    family = family_of(model)
    targets, saved = list(family.targets[preset]), list(family.lora_modules_to_save)
    ours = apply_lora(
        copy.deepcopy(model),
        targets,
        rank=RANK,
        alpha=ALPHA,
        dropout=dropout,
        modules_to_save=saved,
        use_dora=use_dora,
        init=init,
    )
    peft = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=dropout,
            target_modules=targets,
            modules_to_save=saved,
            use_dora=use_dora,
            init_lora_weights=True if init == "kaiming" else init,
        ),
    )
    ours_p, peft_p = trainable(ours, "ours"), trainable(peft, "peft")
    assert ours_p.keys() == peft_p.keys()
    with torch.no_grad():
        for key, p in peft_p.items():
            if "lora_B" in key:
                p.normal_(std=0.1)  # B = 0 would make every comparison trivially equal to the base
            if "magnitude" in key:
                p.mul_(1 + 0.1 * torch.randn_like(p))
            ours_p[key].copy_(p)
    return ours, peft


def trainable(model: torch.nn.Module, impl: str) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters under one common naming (PEFT's saved-adapter keys)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if impl == "ours":
            key = "base_model.model." + name
            key = key.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight")
            key = key.replace(".lora_magnitude", ".lora_magnitude_vector")
        else:
            key = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            key = key.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
            key = key.replace(".modules_to_save.default.", ".")
        out[key] = p
    return out


def loss_of(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).loss


def assert_same_logits_and_gradients(ours: torch.nn.Module, peft: PeftModel) -> None:
    ours.eval(), peft.eval()
    inputs = batch()
    torch.testing.assert_close(ours(**inputs).logits, peft(**inputs).logits, rtol=1e-5, atol=1e-6)
    loss_of(ours, inputs).backward()
    loss_of(peft, inputs).backward()
    ours_p, peft_p = trainable(ours, "ours"), trainable(peft, "peft")
    lora_keys = [k for k in ours_p if ".lora_" in k]
    assert lora_keys, "no LoRA weights were compared"
    for key in ours_p:
        torch.testing.assert_close(ours_p[key].grad, peft_p[key].grad, rtol=1e-4, atol=1e-7, msg=key)


@pytest.mark.parametrize("preset", ["qv", "attn_ffn"])
def test_same_logits_and_gradients(family: str, preset: str) -> None:
    assert_same_logits_and_gradients(*make_pair(tiny_model(family), preset))


def train_losses(model: torch.nn.Module, steps: int = 20, vocab: int = 100) -> list[float]:
    """Fit one fixed batch, so the loss must fall; reseeded so both runs get the same dropout draws."""
    torch.manual_seed(123)
    inputs = batch(vocab=vocab)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_of(model, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


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
def test_real_minilm_matches_peft() -> None:
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    ours, peft = make_pair(model, "qv")
    ours.eval(), peft.eval()
    inputs = batch(vocab=30522, length=32)
    torch.testing.assert_close(ours(**inputs).logits, peft(**inputs).logits, rtol=1e-5, atol=1e-5)
    ours_losses, peft_losses = train_losses(ours, steps=5), train_losses(peft, steps=5)
    assert ours_losses == pytest.approx(peft_losses, abs=1e-5)
