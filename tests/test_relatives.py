"""LoRA's relatives as method rows: IA3 (ours against PEFT, weight for weight, and merged), bottleneck
adapters (against their formula: the `adapters` package requires transformers 4.x, so it cannot be the
reference here), prompt and prefix tuning (through PEFT: they train), and how their runs are named."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, tiny_model

from lora_lab import identity, methods, params
from lora_lab.bottleneck import BottleneckAdapter
from lora_lab.config import compose
from lora_lab.ia3 import IA3Linear, ia3_layers


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch()).logits


def ia3_pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our IA3 and PEFT's on the same base, PEFT's vectors and head perturbed and copied into ours."""
    base = tiny_model(family)
    ours = methods.prepare(copy.deepcopy(base), compose(["method=ia3", "impl=ours"]))
    peft = methods.prepare(copy.deepcopy(base), compose(["method=ia3", "impl=peft"]))
    theirs = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert len(mine) == len(theirs) and any("ia3_l" in n for n in mine)
    with torch.no_grad():
        for name, p in mine.items():
            key = "base_model.model." + name
            key = key.replace(".ia3_l", ".ia3_l.default") if "ia3_l" in name else key
            key = key.replace("classifier.", "classifier.modules_to_save.default.").replace(
                "score.", "score.modules_to_save.default."
            )
            source = theirs[key]
            source.add_(0.1 * torch.randn_like(source))
            p.copy_(source.view_as(p))
    return ours, peft


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])  # Linear, a decoder, Conv1D (GPT-2)
def test_ia3_equals_peft_and_merges(family: str) -> None:
    ours, peft = ia3_pair(family)
    torch.testing.assert_close(logits(ours), logits(peft), rtol=1e-5, atol=1e-6)
    losses = {}
    for impl, model in (("ours", ours), ("peft", peft)):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        torch.manual_seed(0)  # the same dropout draws for both
        losses[impl] = []
        for _ in range(20):
            loss = model(**batch()).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[impl].append(loss.item())
    assert losses["ours"][-1] < losses["ours"][0]
    assert losses["ours"] == pytest.approx(losses["peft"], abs=1e-5)
    before = logits(ours)
    methods.METHODS["ia3"].merge(ours)
    assert all(layer.merged for layer in ia3_layers(ours))
    torch.testing.assert_close(logits(ours), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feedforward", [False, True])
def test_ia3_layer_is_its_formula(feedforward: bool) -> None:
    base = torch.nn.Linear(6, 4)
    layer = IA3Linear(base, feedforward)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x))  # l starts at one
    with torch.no_grad():
        layer.ia3_l.uniform_(0.5, 1.5)
    expected = base(x * layer.ia3_l) if feedforward else base(x) * layer.ia3_l
    torch.testing.assert_close(layer(x), expected)
    layer.merge()
    torch.testing.assert_close(layer(x), expected)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base.weight)


def test_bottleneck_adapter_is_its_formula_and_starts_as_the_base() -> None:
    base = torch.nn.Linear(8, 32)
    adapter = BottleneckAdapter(base, reduction_factor=16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(adapter(x), base(x))
    with torch.no_grad():
        adapter.adapter_up.weight.normal_()
    h = base(x)
    down, up = adapter.adapter_down, adapter.adapter_up
    expected = h + torch.relu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    torch.testing.assert_close(adapter(x), expected)
    assert down.weight.shape == (2, 32)


@pytest.mark.parametrize(("row", "per_layer"), [("houlsby", 2), ("pfeiffer", 1)])
def test_bottleneck_placement_and_count(family: str, row: str, per_layer: int) -> None:
    base = tiny_model(family)
    model = methods.prepare(copy.deepcopy(base), compose([f"method={row}"]))
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    assert len(adapters) == 2 * per_layer  # the tiny models have two layers
    torch.testing.assert_close(logits(model), logits(base))  # up starts at zero
    head = params.count(methods.prepare(copy.deepcopy(base), compose(["method=head_only"])))[0]
    d = adapters[0].adapter_up.out_features
    h = d // 16
    trainable, total = params.count(model)
    saved = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "adapter_" not in n)
    assert trainable - saved == len(adapters) * (2 * d * h + h + d)
    assert total == params.count(base)[1] and saved >= head


@pytest.mark.parametrize("row", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_trains_through_peft(row: str) -> None:
    model = methods.prepare(tiny_model("bert"), compose([f"method={row}"])).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(15):
        loss = model(**batch()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trainable, total = params.count(model)
    assert total == params.count(tiny_model("bert"))[1]
    if row == "prompt_tuning":  # 20 virtual tokens of width 32, and the 2-label head
        assert trainable == 20 * 32 + 32 * 2 + 2


@pytest.mark.slow
def test_runs_of_the_relatives_are_named_by_what_they_compute() -> None:
    def name(*overrides: str) -> str:
        return identity.run_name(compose(list(overrides)))

    assert name("method=ia3").startswith("ia3-ours-seed0-")
    assert name("method=ia3", "impl=peft") != name("method=ia3")
    assert name("method=ia3", "rank=4") == name("method=ia3")  # LoRA settings are not IA3's
    assert name("method=houlsby").startswith("houlsby_rf16-ours-")
    assert name("method=houlsby", "impl=peft") == name("method=houlsby")  # one impl: not a setting
    assert name("method=houlsby", "method.reduction_factor=8").startswith("houlsby_rf8-ours-")
    assert name("method=prompt_tuning").startswith("prompt_tuning_v20-peft-")
    labels = {row: methods.row_label(compose([f"method={row}"])) for row in ("houlsby", "prefix_tuning")}
    assert labels == {"houlsby": "Houlsby adapters (d/16)", "prefix_tuning": "Prefix Tuning (20 tokens)"}


def test_a_bad_placement_is_one_line_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"method.placement='middle' is not allowed; use one of"):
        methods.check(compose(["method=houlsby", "method.placement=middle"]))
