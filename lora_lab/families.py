"""Architecture families: which modules of each model type the method presets adapt, train or follow.

One entry per family (keyed by the config's `model_type`). Kept apart from models.py, and free of torch, so
that the settings checks that name a family's modules run before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """Module names of one architecture family: LoRA presets as PEFT-style name suffixes, and the regexes
    (whole names) that place the other adapters."""

    targets: dict[str, tuple[str, ...]]  # LoRA target presets: qv, attn, attn_ffn
    head: tuple[str, ...]  # what head-only trains
    lora_modules_to_save: tuple[str, ...]  # trained in full beside adapters (what PEFT's SEQ_CLS trains)
    keys_values: str  # the key and value projections (IA3 rescales their outputs)
    attn_out: str  # the attention output projection (Houlsby's first adapter follows it)
    ffn_out: str  # the feed-forward output projection (IA3 rescales its input; both adapters follow it)
    pools_last: bool = False  # the head reads the last position (decoders), not the first (encoders)


_BERT_ATTN = ("query", "key", "value", "attention.output.dense")
_BERT_LIKE = Family(
    targets={
        "qv": ("query", "value"),
        "attn": _BERT_ATTN,
        "attn_ffn": (*_BERT_ATTN, "intermediate.dense", "output.dense"),
    },
    head=("classifier",),
    lora_modules_to_save=("classifier",),
    keys_values=r".*\.attention\.self\.(key|value)",
    attn_out=r".*\.attention\.output\.dense",
    ffn_out=r".*\.layer\.\d+\.output\.dense",
)
_LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_LLAMA_LIKE = Family(
    targets={
        "qv": ("q_proj", "v_proj"),
        "attn": _LLAMA_ATTN,
        "attn_ffn": (*_LLAMA_ATTN, "gate_proj", "up_proj", "down_proj"),
    },
    head=("score",),
    pools_last=True,
    lora_modules_to_save=("score",),
    keys_values=r".*\.self_attn\.(k_proj|v_proj)",
    attn_out=r".*\.self_attn\.o_proj",
    ffn_out=r".*\.mlp\.down_proj",
)

FAMILIES: dict[str, Family] = {
    "distilbert": Family(
        targets={
            "qv": ("q_lin", "v_lin"),
            "attn": ("q_lin", "k_lin", "v_lin", "out_lin"),
            "attn_ffn": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        },
        head=("classifier",),
        # The reference counts include pre_classifier: PEFT's SEQ_CLS rule "classifier" matches it by suffix.
        lora_modules_to_save=("pre_classifier", "classifier"),
        keys_values=r".*\.attention\.(k_lin|v_lin)",
        attn_out=r".*\.attention\.out_lin",
        ffn_out=r".*\.ffn\.lin2",
    ),
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    # GPT-2 fuses q, k and v into one Conv1D (c_attn): "qv" adapts all three, the closest it allows.
    "gpt2": Family(
        targets={
            "qv": ("c_attn",),
            "attn": ("c_attn", "attn.c_proj"),
            "attn_ffn": ("c_attn", "c_proj", "c_fc"),
        },
        head=("score",),
        pools_last=True,
        lora_modules_to_save=("score",),
        keys_values=r".*\.attn\.c_attn",
        attn_out=r".*\.attn\.c_proj",
        ffn_out=r".*\.mlp\.c_proj",
    ),
}


def family_of(model: Any) -> Family:
    """The family of a loaded model (anything with a transformers `config`)."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"no target presets for model_type {model_type!r} (known: {sorted(FAMILIES)}); "
            "give explicit module names instead, e.g. method.targets=[q_proj,v_proj]"
        )
    return FAMILIES[model_type]
