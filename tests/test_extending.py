"""A new method kind and a new LoRA variant through the steps docs/contributing.md gives, and nothing else,
from outside the repository: a class registered in `methods.METHODS` and a file under `method/` in a config
folder. If another place had to know of them (a list of kinds or variants, a settings tuple, the PEFT mapping,
the table's order, the parameter counts), these runs or their table would break."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import ASSETS, TINY_RUN, requires_assets, tiny_model
from torch import nn

from lora_lab import config, identity, methods, recipe
from lora_lab.analysis import load_runs, summarize
from lora_lab.families import family_of
from lora_lab.lora import LoRASettings, lora_layers
from lora_lab.lora.layer import LoRALinear
from lora_lab.lora.settings import option
from lora_lab.methods.lora import LoRA

STEP_2 = """# @package _global_
# The head, and a trained gain on what the head reads (a toy method for tests/test_extending.py).
method:
  kind: head_gain
  targets: null
  lr: 1.0e-2
"""


class HeadGain(methods.Method):
    """Step 1: the declaration. The head trains, and one added scalar scales its input."""

    adds = ("toy_gain",)

    def prepare(self, model: nn.Module, cfg) -> nn.Module:
        model = methods.train_only(model, family_of(model).head)
        head = model.get_submodule(family_of(model).head[0])
        head.toy_gain = nn.Parameter(torch.ones(()))
        head.register_forward_pre_hook(lambda module, args: (args[0] * module.toy_gain, *args[1:]))
        return model

    def label(self, cfg) -> str:
        return "Head with a gain"


@requires_assets
def test_a_method_kind_added_by_the_documented_steps_runs_counts_and_tabulates(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(methods.METHODS, "head_gain", HeadGain())  # step 1: the class in METHODS
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "head_gain.yaml").write_text(STEP_2)  # step 2: its conf/method file
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"  # here in place of the repo's conf/
    common = [*TINY_RUN, search, f"results_dir={tmp_path / 'results'}", "trainer.max_steps=2"]
    records = {m: recipe.run(config.compose([*common, f"method={m}"])) for m in ("head_gain", "head_only")}

    gain, head = records["head_gain"], records["head_only"]
    assert gain["status"] == "complete" and gain["name"].startswith("head_gain-none-seed0-")
    assert gain["label"] == "Head with a gain" and gain["method"] == "head_gain"
    # the gain is trained, and added: the base model's size (the trainable-% denominator) does not count it
    assert gain["trainable_params"] == head["trainable_params"] + 1
    assert gain["total_params"] == head["total_params"]
    table = summarize(load_runs(tmp_path / "results" / "default"))
    assert list(table["label"]) == ["Classification Head Only", "Head with a gain"]  # registry order


def test_what_the_registry_derives_includes_a_kind_registered_later(monkeypatch) -> None:
    class WithASetting(HeadGain):
        settings = ("gain_init",)

    monkeypatch.setitem(methods.METHODS, "head_gain", WithASetting())
    assert "toy_gain" in methods.added() and "gain_init" in methods.every_setting()


class DoubledLinear(LoRALinear):
    """Variant step 2: the layer that runs it (a toy: the update counts twice)."""

    @property
    def scaling(self) -> float:
        return 2 * self.settings.scaling


@dataclasses.dataclass(frozen=True)
class WithToy(LoRASettings):
    """Variant step 1: its option, here on a subclass registered as `LoRA(WithToy)` (in the repository it
    would be a field of LoRASettings). PEFT has no such field."""

    use_toy: bool = option(
        False,
        "true or false",
        lambda v: isinstance(v, bool),
        peft=None,
        names={True: ("Toy", "toy")},
        layer=f"{__name__}.DoubledLinear",
    )


TOY_ROW = """# @package _global_
# Q+V r=8 with the toy variant on (variant step 3: a method row that sets it).
rank: 8
use_toy: true
method:
  kind: lora
  targets: qv
  lr: ${lora_lr}
"""


@requires_assets
@pytest.mark.slow
def test_a_lora_variant_added_by_the_documented_steps_runs_names_saves_and_tabulates(tmp_path, monkeypatch):
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "toy_qv_r8.yaml").write_text(TOY_ROW)
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    common = [*TINY_RUN, search, f"results_dir={tmp_path / 'results'}", "trainer.max_steps=2"]
    before = config.compose([*common, "method=qv_r8"])
    recipe.settle(before)
    plain_name = identity.run_name(before)  # before the variant exists
    monkeypatch.setitem(methods.METHODS, "lora", LoRA(WithToy))  # step 1, registered

    toy_cfg = config.compose([*common, "method=toy_qv_r8"])
    layers = lora_layers(methods.prepare(tiny_model("bert"), toy_cfg))
    assert layers and all(type(layer) is DoubledLinear for _, layer in layers)
    with pytest.raises(ValueError, match=r"^use_toy=True has no PEFT counterpart; use impl=ours$"):
        methods.check(config.compose([*common, "method=toy_qv_r8", "impl=peft"]))

    toy = recipe.run(toy_cfg)
    plain = recipe.run(config.compose([*common, "method=qv_r8"]))
    assert toy["status"] == plain["status"] == "complete"
    assert toy["name"].startswith("qv_r8_toy-ours-seed0-") and toy["label"] == "Q+V (r=8, Toy)"
    assert plain["name"] == plain_name  # the new option, null elsewhere, leaves other runs' names alone
    assert adapter_config(tmp_path, toy)["use_toy"] is True  # kept under its own name: PEFT has no field
    assert "use_toy" not in adapter_config(tmp_path, plain)
    table = summarize(load_runs(tmp_path / "results" / "default"))
    assert sorted(table["label"]) == ["Q+V (r=8)", "Q+V (r=8, Toy)"]


def adapter_config(tmp_path, record: dict) -> dict:
    return json.loads(
        (tmp_path / "results" / "default" / "runs" / record["name"] / "adapter_config.json").read_text()
    )
