"""The fine-tuning methods, one class per `method.kind` in the METHODS registry.

A method (base.py) says what trains (`prepare`), what a run keeps (`save`), how its row is named (`label`,
`row`), which implementations it has (`impls`), and which top-level settings shape its result (`settings`:
the others leave its run identity). The kinds: simple.py (head-only, the probe, full), lora.py, relatives.py
(IA3, bottleneck adapters, prompt and prefix tuning). Adding a kind is one class and its entry in METHODS
below, plus a file in conf/method/ (docs/contributing.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lora_lab.config import is_number, require
from lora_lab.methods.base import IMPLS, Method, train_only
from lora_lab.methods.lora import LoRA
from lora_lab.methods.relatives import IA3, Bottleneck, PromptLearning
from lora_lab.methods.simple import Full, HeadOnly, HeadOnlyCached

if TYPE_CHECKING:
    from torch import nn

__all__ = [  # the registry's interface; the kinds live in the modules imported above
    "IMPLS",
    "METHODS",
    "Method",
    "added",
    "check",
    "every_setting",
    "lr_setting",
    "of",
    "prepare",
    "row_label",
    "train_only",
]

METHODS: dict[str, Method] = {  # in the table's order
    "head_only": HeadOnly(),
    "head_only_cached": HeadOnlyCached(),
    "lora": LoRA(),
    "ia3": IA3(),
    "bottleneck": Bottleneck(),
    "prompt_tuning": PromptLearning("Prompt Tuning", "PromptTuningConfig", prepends_tokens=True),
    "prefix_tuning": PromptLearning("Prefix Tuning", "PrefixTuningConfig", prepends_tokens=False),
    "full": Full(),
}


def added() -> tuple[str, ...]:
    """How the parameters any method adds are named (params.count): read from the registry when asked, so that
    a kind registered later counts too."""
    return tuple(dict.fromkeys(prefix for method in METHODS.values() for prefix in method.adds))


def every_setting() -> tuple[str, ...]:
    """Every top-level setting some method reads: a run's identity keeps only its own method's."""
    return tuple(dict.fromkeys(key for method in METHODS.values() for key in method.settings))


def of(cfg: DictConfig) -> Method:
    kind = cfg.method.kind
    if kind not in METHODS:
        raise ValueError(f"method.kind={kind!r} is not one of {tuple(METHODS)}")
    return METHODS[kind]


def check(cfg: DictConfig) -> None:
    method = of(cfg)
    method.check(cfg)
    if cfg.get("quant") not in (None, "nf4"):
        raise ValueError(f"quant={cfg.quant!r} is not supported; use quant=nf4 or leave it null")
    lr = cfg.method.lr
    require(is_number(lr) and lr > 0, lr_setting(cfg), lr, "a learning rate > 0")


def lr_setting(cfg: DictConfig) -> str:
    """The setting a user changes to change this row's learning rate: the top-level one its file points to
    (`lr: ${lora_lr}`, `${head_lr}`, `${full_lr}`), else method.lr."""
    if not OmegaConf.is_interpolation(cfg.method, "lr"):
        return "method.lr"
    return OmegaConf.to_container(cfg.method)["lr"].strip("${}")


def prepare(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Set which parameters train (and add adapters) according to `cfg.method`; returns the model to train."""
    check(cfg)
    return of(cfg).prepare(model, cfg)


def row_label(cfg: DictConfig) -> str:
    return of(cfg).label(cfg)
