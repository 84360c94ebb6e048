"""load_adapter is all or nothing: a bad adapter leaves the model as it was, and the error names the file.
An adapter of the same targets and shapes swaps into a model that already carries one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import batch, tiny_model
from safetensors.torch import load_file, save_file

from lora_lab.lora import apply_lora, load_adapter, lora_layers, save_adapter

TARGETS = ["q_lin", "v_lin"]
HEAD = ["pre_classifier", "classifier"]


def trained(seed: int, rank: int = 4, alpha: float = 8) -> torch.nn.Module:
    """Tiny DistilBERT with our LoRA, its B and head moved off their initial values by `seed`."""
    model = apply_lora(tiny_model("distilbert"), TARGETS, rank=rank, alpha=alpha, modules_to_save=HEAD)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits


def snapshot(model: torch.nn.Module) -> tuple[dict, dict, str]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        repr(model),
    )


def assert_untouched(model: torch.nn.Module, before: tuple[dict, dict, str]) -> None:
    state, grads, text = snapshot(model)
    assert text == before[2] and grads == before[1] and not hasattr(model, "lora_adapter")
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)


def truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def garble_config(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{not json")


def drop_rank(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["r"]
    (folder / "adapter_config.json").write_text(json.dumps(config))


def wrong_rank(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 8
    (folder / "adapter_config.json").write_text(json.dumps(config))


def drop_key(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors.pop(sorted(k for k in tensors if "lora_B" in k)[-1])
    save_file(tensors, weights)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "adapter_model.safetensors cannot be read"),
        (garble_config, "adapter_config.json is not valid JSON"),
        (drop_rank, "adapter_config.json lacks ['r']"),
        (wrong_rank, "has shape (4, 32), the model needs (8, 32)"),
        (drop_key, "does not fit this model: missing ["),
    ],
)
def test_a_bad_adapter_leaves_the_model_untouched(tmp_path, damage, message) -> None:
    save_adapter(trained(seed=1), tmp_path / "adapter")
    damage(tmp_path / "adapter")
    base = tiny_model("distilbert")
    before = snapshot(base)
    with pytest.raises(ValueError, match="adapter") as err:
        load_adapter(base, tmp_path / "adapter")
    assert message in str(err.value)
    assert str(tmp_path / "adapter") in str(err.value)
    assert_untouched(base, before)
    # ... and the same base takes a good adapter afterwards
    save_adapter(trained(seed=2), tmp_path / "good")
    torch.testing.assert_close(logits(load_adapter(base, tmp_path / "good").eval()), logits(trained(seed=2)))


def test_same_shaped_adapter_swaps_in_place(tmp_path) -> None:
    first, second = trained(seed=1), trained(seed=2, alpha=4)
    save_adapter(first, tmp_path / "first")
    save_adapter(second, tmp_path / "second")
    model = load_adapter(tiny_model("distilbert"), tmp_path / "first").eval()
    layers = [layer for _, layer in lora_layers(model)]
    torch.testing.assert_close(logits(model), logits(first))
    assert load_adapter(model, tmp_path / "second") is model
    assert [layer for _, layer in lora_layers(model)] == layers  # the same modules, new weights
    assert layers[0].scaling == 1.0  # alpha 4 / rank 4
    torch.testing.assert_close(logits(model), logits(second))
    load_adapter(model, tmp_path / "first")
    torch.testing.assert_close(logits(model), logits(first))


def test_swap_refuses_another_rank_and_keeps_the_old_adapter(tmp_path) -> None:
    save_adapter(trained(seed=1), tmp_path / "r4")
    save_adapter(trained(seed=2, rank=8, alpha=16), tmp_path / "r8")
    model = load_adapter(tiny_model("distilbert"), tmp_path / "r4").eval()
    before = logits(model)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="hot-swapping needs the same targets and rank"):
        load_adapter(model, tmp_path / "r8")
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
