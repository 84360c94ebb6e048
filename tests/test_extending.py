"""A new method kind through the steps docs/contributing.md gives, and nothing else: a class in
`methods.METHODS` and a file under `method/` in a config folder. If another place had to know of it (a list of
kinds, a settings tuple, the table's order, the parameter counts), this run or its table would break."""

from __future__ import annotations

import torch
from conftest import ASSETS, TINY_RUN, requires_assets
from torch import nn

from lora_lab import config, methods, recipe
from lora_lab.analysis import load_runs, summarize
from lora_lab.families import family_of

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
