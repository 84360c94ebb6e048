"""The fine-tuning methods, one class per `method.kind` in the METHODS registry.

A method says what trains (`prepare`), what a run keeps (`save`), how its row is named (`label`, `row`),
which implementations it has (`impls`), and which top-level settings shape its result (`settings`: the
others leave its run identity). Adding a kind is one class here plus a file in conf/method/
(docs/contributing.md).

Only the checks and names run at import: what touches a model (torch, our adapters, PEFT) is imported where a
method is applied, so that a bad setting fails before any of it loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig, OmegaConf

from lora_lab.config import is_int, is_number, require, seeds_of
from lora_lab.families import FAMILIES, family_of
from lora_lab.lora.settings import INITS, RANDOM_INITS, LoRASettings, to_peft

if TYPE_CHECKING:  # the model side loads torch; the checks and names here run without it
    from torch import nn

    from lora_lab.data import Encoded

IMPLS = ("ours", "peft")
TARGET_LABELS = {"qv": "Q+V", "attn": "All Attention", "attn_ffn": "All Attention+FFN"}


def targets_of(model: nn.Module, targets: str | Sequence[str]) -> str | list[str]:
    """A preset name (qv, attn, attn_ffn) resolved for this model's family, or explicit names / a regex."""
    if isinstance(targets, (list, tuple, ListConfig)):
        return list(targets)
    if targets in TARGET_LABELS:
        return list(family_of(model).targets[targets])
    return str(targets)  # "all-linear" or a regex


def train_only(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Freeze everything but the modules named (by suffix)."""
    from lora_lab.lora.inject import name_matches

    model.requires_grad_(False)
    for name, module in model.named_modules():
        if name_matches(name, names):
            module.requires_grad_(True)
    return model


class Method:
    """One kind of fine-tuning; the defaults suit a method with no settings, impls or files to keep."""

    impls: tuple[str, ...] = ()  # the values `impl` may take; a single one is fixed, not a setting
    settings: tuple[str, ...] = ()  # top-level config keys that shape this method's result
    # How the names of the parameters it adds begin (a part of the dotted name): params.count leaves them out
    # of the base model's size, the trainable-% denominator. PEFT's trained copies of the head are
    # "modules_to_save".
    adds: tuple[str, ...] = ()

    def check(self, cfg: DictConfig) -> None:
        """Settings that can be checked before anything loads."""
        if len(self.impls) > 1 and cfg.impl not in self.impls:
            raise ValueError(f"impl={cfg.impl!r} is not one of {self.impls}; use impl=ours or impl=peft")

    def impl(self, cfg: DictConfig) -> str | None:
        """The implementation a run uses: `impl` where there is a choice, else the only one (or none)."""
        return cfg.impl if len(self.impls) > 1 else next(iter(self.impls), None)

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        raise NotImplementedError

    def lr_ratios(self, model: nn.Module, cfg: DictConfig) -> dict[str, float]:
        """Trainable parameters (by name) that learn at a multiple of the run's learning rate; the rest learn
        at it. The optimizer groups them (train.optimizer_for)."""
        return {}

    def label(self, cfg: DictConfig) -> str:
        """The table's name of the row, e.g. "Q+V (r=8)"."""
        raise NotImplementedError

    def row(self, cfg: DictConfig) -> str:
        """The readable start of a run's name."""
        return cfg.method.kind

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path | None:
        """Keep what the run trained, when it is small (an adapter); None when nothing is kept."""
        return None

    def merge(self, model: nn.Module) -> nn.Module | None:
        """The model with its adapter folded into the base weights (inference at the base's cost), in
        place; None for methods whose additions cannot be folded."""
        return None

    def inputs(
        self, model: nn.Module, train: Encoded, evaluation: Encoded, cfg: DictConfig
    ) -> tuple[nn.Module, Encoded, Encoded]:
        """What the training loop runs on: the prepared model and the tokenised sets, as they are for all but
        the linear probe."""
        return model, train, evaluation

    def pads_left(self, model: nn.Module) -> bool:
        """Whether batches must pad on the left for `model` prepared this way, whatever its tokenizer says."""
        return False

    def unmerge(self, model: nn.Module) -> None:
        """Undo `merge`: the adapter apart from the base weights again, as it trained."""
        raise NotImplementedError

    @contextmanager
    def merged(self, model: nn.Module, cfg: DictConfig) -> Iterator[nn.Module]:
        """`model` with its additions folded into the base weights inside the block (the same function up to
        rounding, at the base's cost) and unfolded after, so that what is saved is what trained. A 4-bit
        base cannot take them, and methods that do not fold stay as they are."""
        folded = not cfg.quant and self.merge(model) is not None
        try:
            yield model
        finally:
            if folded:
                self.unmerge(model)


class HeadOnly(Method):
    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        return train_only(model, family_of(model).head)

    def label(self, cfg: DictConfig) -> str:
        return "Classification Head Only"


class HeadOnlyCached(HeadOnly):
    """Head-only as a linear probe (probe.py): the frozen encoder runs once per review, in eval mode."""

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if cfg.trainer.gradient_checkpointing:
            raise ValueError(
                "method=head_only_cached trains the head alone, with no activations to recompute; "
                "use trainer.gradient_checkpointing=false"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        if family_of(model).pools_last:
            raise ValueError(
                f"method=head_only_cached caches one vector per review, but {model.config.model_type}'s head "
                "reads every position; use method=head_only"
            )
        return super().prepare(model, cfg)

    def label(self, cfg: DictConfig) -> str:
        return "Classification Head Only (cached features)"

    def inputs(
        self, model: nn.Module, train: Encoded, evaluation: Encoded, cfg: DictConfig
    ) -> tuple[nn.Module, Encoded, Encoded]:
        """The head alone, and each set with the features it reads (from the disk cache where it can)."""
        import torch

        from lora_lab import probe

        head = model.get_submodule(family_of(model).head[0])
        trainer = cfg.trainer
        device = torch.device(trainer.device)
        train, evaluation = probe.cached(
            model,
            head,
            [train, evaluation],
            cfg.data.cache_dir,
            trainer.eval_batch_size,
            model.config.pad_token_id,
            device,
            trainer.precision,
            trainer.progress,
            cfg.force,
        )
        return probe.Probe(head), train, evaluation


class Full(Method):
    def check(self, cfg: DictConfig) -> None:
        if cfg.get("quant"):
            raise ValueError(
                "quant=nf4 freezes a 4-bit base; full fine-tuning cannot train it (use a LoRA method)"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        return model.requires_grad_(True)

    def label(self, cfg: DictConfig) -> str:
        return "Full Fine-Tuning"


def lora_settings(cfg: DictConfig) -> LoRASettings:
    """The LoRA settings of a config: its top-level keys named like LoRASettings' fields (null: default)."""
    return LoRASettings.from_options(**{f.name: cfg.get(f.name) for f in dataclasses.fields(LoRASettings)})


class LoRA(Method):
    """Low-rank adapters (and the DoRA, PiSSA/OLoRA and LoRA+ variants), ours or PEFT's, with the
    classification head trained in full beside them."""

    impls = IMPLS
    settings = ("impl", "lora_lr", "lora_plus_ratio", *(f.name for f in dataclasses.fields(LoRASettings)))
    adds = ("lora_", "modules_to_save")

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        init = cfg.get("init")
        require(init is None or init in INITS, "init", init, f"one of {INITS}, or null for kaiming")
        ratio = cfg.get("lora_plus_ratio")
        ok = ratio is None or (is_number(ratio) and ratio > 0)
        require(ok, "lora_plus_ratio", ratio, "B's learning rate over A's (> 0; LoRA+ uses 16), or null")
        lora_settings(cfg).check()  # rank, alpha, dropout, flags: before any model loads
        targets = cfg.method.targets
        if not isinstance(targets, str) and len(targets) == 0:
            model_type = cfg.model.get("model_type")
            family = FAMILIES.get(model_type)
            qv = f"[{','.join(family.targets['qv'])}] ({model_type}'s query and value)" if family else "[...]"
            raise ValueError(
                f"method.targets=[] adapts nothing; name the modules to adapt, e.g. method.targets={qv}"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import lora

        family = family_of(model)
        targets = targets_of(model, cfg.method.targets)
        saved = list(family.lora_modules_to_save)
        settings = lora_settings(cfg)
        if cfg.impl == "ours":
            model = lora.apply_lora(model, targets, settings, modules_to_save=saved)
        else:
            model = _peft_lora(model, targets, saved, settings)
        if settings.init in RANDOM_INITS:
            _seed_lora_a(model, settings.init, seeds_of(cfg)["init"])
        return model

    def lr_ratios(self, model: nn.Module, cfg: DictConfig) -> dict[str, float]:
        """LoRA+ (Hayou et al. 2024): B learns `lora_plus_ratio` times faster than A. Grouped as PEFT's
        create_loraplus_optimizer groups: every lora_B and every other trainable 1-D tensor (biases, norms,
        DoRA's magnitudes, the head's bias) at the ratio; the paper speeds up B alone."""
        ratio = cfg.get("lora_plus_ratio")
        if not ratio:
            return {}
        return {
            name: ratio
            for name, p in model.named_parameters()
            if p.requires_grad and ("lora_B" in name or p.dim() == 1)
        }

    def label(self, cfg: DictConfig) -> str:
        targets = cfg.method.targets
        name = TARGET_LABELS.get(targets, targets if isinstance(targets, str) else "+".join(targets))
        variant = ", ".join(label for label, _ in _variants(cfg))
        return f"{name} (r={cfg.rank}{', ' + variant if variant else ''})"

    def row(self, cfg: DictConfig) -> str:
        targets = cfg.method.targets if isinstance(cfg.method.targets, str) else "custom"
        variant = "".join(f"_{slug}" for _, slug in _variants(cfg))
        return f"{targets}_r{cfg.rank}{variant}"

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path:
        """The adapter in PEFT's format (PiSSA/OLoRA converted to a plain LoRA on the original base)."""
        from lora_lab import lora

        if not _is_peft(model):
            return lora.save_adapter(model, path, base_model_name_or_path=base_name)
        model.save_pretrained(path)  # PEFT's own PiSSA/OLoRA files replay the init on the original base
        return path

    def merge(self, model: nn.Module) -> nn.Module:
        from lora_lab import lora

        return _peft_merge(model) if _is_peft(model) else lora.merge(model)

    def unmerge(self, model: nn.Module) -> None:
        from lora_lab import lora

        model.unmerge_adapter() if _is_peft(model) else lora.unmerge(model)


def _variants(cfg: DictConfig) -> list[tuple[str, str]]:
    """The named LoRA variants a config turns on, as (label, run-name part); QLoRA is LoRA on an NF4 base."""
    settings = lora_settings(cfg)
    names = {"pissa": [("PiSSA", "pissa")], "olora": [("OLoRA", "olora")]}.get(settings.init, [])
    if settings.use_dora:
        names.append(("DoRA", "dora"))
    if cfg.get("lora_plus_ratio"):
        names.append(("LoRA+", "loraplus"))
    if cfg.get("quant"):
        names.append((f"{cfg.quant.upper()} base", cfg.quant))
    return names


def _peft_lora(
    model: nn.Module, targets: str | list[str], saved: list[str], settings: LoRASettings
) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model  # slow to import; only impl=peft needs it

    from lora_lab import lora

    # PEFT's own all-linear would also catch pre_classifier (a head module); give it our resolved list.
    if targets == "all-linear":
        targets = lora.resolve_targets(model, targets)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, bias="none", **to_peft(settings, targets, saved))
    return get_peft_model(model, config)


def _seed_lora_a(model: nn.Module, init: str, seed: int) -> None:
    """Draw every lora_A again from one seeded stream, in module order, so ours and PEFT start identical
    (PEFT consumes the global RNG differently while building its layers). B stays zero."""
    import torch

    from lora_lab.lora.layer import random_a

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(random_a(p.shape, init, g))


def _peft_merge(model: nn.Module) -> nn.Module:
    model.merge_adapter()
    return model


class IA3(Method):
    """(IA)^3: learned rescaling of keys, values and the feed-forward's inner activations (ia3.py), ours or
    PEFT's, with the head trained in full."""

    impls = IMPLS
    settings = ("impl",)
    adds = ("ia3_", "modules_to_save")

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if cfg.get("quant"):
            raise ValueError(
                "quant=nf4 stores the base in 4-bit integers, which IA3's scaling vectors cannot multiply "
                "in place; use quant=null with method=ia3, or a LoRA method on the 4-bit base"
            )

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import ia3, lora

        family = family_of(model)
        targets = lora.resolve_targets(model, f"{family.keys_values}|{family.ffn_out}")
        feedforward = lora.resolve_targets(model, family.ffn_out)
        saved = list(family.lora_modules_to_save)
        if cfg.impl == "ours":
            return ia3.apply_ia3(model, targets, feedforward, saved)
        from peft import IA3Config, TaskType, get_peft_model

        config = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=saved,
        )
        return get_peft_model(model, config)

    def label(self, cfg: DictConfig) -> str:
        return "IA3 (keys, values, FFN)"

    def save(self, model: nn.Module, path: Path, base_name: str) -> Path | None:
        if _is_peft(model):
            model.save_pretrained(path)
            return path
        return None

    def merge(self, model: nn.Module) -> nn.Module:
        from lora_lab import ia3

        if _is_peft(model):
            return _peft_merge(model)
        for layer in ia3.ia3_layers(model):
            layer.merge()
        return model

    def unmerge(self, model: nn.Module) -> None:
        from lora_lab import ia3

        if _is_peft(model):
            model.unmerge_adapter()
            return
        for layer in ia3.ia3_layers(model):
            layer.unmerge()


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")  # a PeftModel (checked without importing peft)


class Bottleneck(Method):
    """Bottleneck adapters in series after sublayer outputs (bottleneck.py): Houlsby (attention and
    feed-forward) or Pfeiffer (feed-forward only), by `method.placement`. In-house only: PEFT has none."""

    impls = ("ours",)
    adds = ("adapter_",)
    PLACEMENTS = ("houlsby", "pfeiffer")

    def check(self, cfg: DictConfig) -> None:
        placement = cfg.method.get("placement")
        require(placement in self.PLACEMENTS, "method.placement", placement, f"one of {self.PLACEMENTS}")

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        from lora_lab import bottleneck

        family = family_of(model)
        after = (
            family.ffn_out if cfg.method.placement == "pfeiffer" else f"{family.attn_out}|{family.ffn_out}"
        )
        return bottleneck.apply_bottleneck(
            model, after, cfg.method.reduction_factor, list(family.lora_modules_to_save)
        )

    def label(self, cfg: DictConfig) -> str:
        return f"{cfg.method.placement.capitalize()} adapters (d/{cfg.method.reduction_factor})"

    def row(self, cfg: DictConfig) -> str:
        return f"{cfg.method.placement}_rf{cfg.method.reduction_factor}"


class PromptLearning(Method):
    """Prompt tuning (Lester et al. 2021: trained embeddings of virtual tokens before the input) or prefix
    tuning (Li and Liang 2021: trained keys and values at every layer), through PEFT only, with the head
    trained in full (PEFT's SEQ_CLS does)."""

    impls = ("peft",)
    adds = ("prompt_encoder", "modules_to_save")

    def __init__(self, name: str, peft_config: str, prepends_tokens: bool) -> None:
        self.name, self.peft_config, self.prepends_tokens = name, peft_config, prepends_tokens

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        n = cfg.method.num_virtual_tokens
        require(is_int(n) and n >= 1, "method.num_virtual_tokens", n, "a whole number of tokens >= 1")

    def pads_left(self, model: nn.Module) -> bool:
        """Prompt tuning hands the model embeddings, in which it cannot find the padding: a decoder then pools
        on the last position, a pad under right padding. Padding on the left puts the review's last token
        there (prefix tuning passes the ids and pools right either way)."""
        return self.prepends_tokens and family_of(model).pools_last

    def prepare(self, model: nn.Module, cfg: DictConfig) -> nn.Module:
        import peft

        config = getattr(peft, self.peft_config)(
            task_type=peft.TaskType.SEQ_CLS,
            num_virtual_tokens=cfg.method.num_virtual_tokens,
            # PEFT reads these from the model's config by their usual names, which DistilBERT's lacks
            token_dim=model.get_input_embeddings().embedding_dim,
            num_layers=model.config.num_hidden_layers,
            num_attention_heads=model.config.num_attention_heads,
        )
        return peft.get_peft_model(model, config)

    def label(self, cfg: DictConfig) -> str:
        return f"{self.name} ({cfg.method.num_virtual_tokens} tokens)"

    def row(self, cfg: DictConfig) -> str:
        return f"{cfg.method.kind}_v{cfg.method.num_virtual_tokens}"


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
