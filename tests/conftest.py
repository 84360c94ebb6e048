"""Shared fixtures: tiny random models of each family, and the real assets in ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

# One thread per test process, set before torch is imported, and inherited by every CLI subprocess a test
# starts from os.environ: pytest-xdist runs one worker per core, and torch's default of one thread per core
# in each would oversubscribe the CPU, and the tests' tiny matmuls gain nothing from a second thread.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import pytest  # noqa: E402

from lora_lab.families import FAMILIES  # noqa: E402

if TYPE_CHECKING:
    import torch

# torch and transformers are imported where a fixture or helper needs them, not here: pytest-xdist's
# controller loads this file too, and runs no test.

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("LORA_LAB_ASSETS", REPO.parent / "shared"))
MINILM = ASSETS / "models" / "all-MiniLM-L6-v2"
IMDB = ASSETS / "data" / "imdb"
if ASSETS.is_dir():  # as `make test` exports it, so that a bare `pytest` loads the same local files
    os.environ.setdefault("LORA_LAB_ASSETS", str(ASSETS))

if os.environ.get("CI") and not ASSETS.is_dir():
    raise RuntimeError(f"CI must run with the shared assets at {ASSETS}; tests that need them would skip")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first: pytest-xdist hands tests out in order, so the long ones start at once on
    both workers instead of one worker finishing the suite alone (the order within each group is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


requires_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason=f"shared assets not found at {ASSETS}")
# A real run in seconds: the runner's overrides for a tiny random BERT on 64 IMDB reviews.
TINY_RUN = [
    "model=tiny_bert",
    "data.train_size=64",
    "data.eval_size=64",
    "data.max_length=64",
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.log_every=1",
]

_DECODER = {  # Llama and Qwen2 take the same arguments
    "vocab_size": 100,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}
TINY_CONFIGS = {  # family: (transformers' config class, its arguments)
    "distilbert": (
        "DistilBertConfig",
        {"vocab_size": 100, "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2},
    ),
    "bert": (
        "BertConfig",
        {
            "vocab_size": 100,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    ),
    "llama": (
        "LlamaConfig",
        _DECODER,
    ),
    "qwen2": (
        "Qwen2Config",
        _DECODER,
    ),
    "gpt2": (
        "GPT2Config",
        {"vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "pad_token_id": 0},
    ),
}


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-init 2-label classifier of `family`; `overrides` change its config (e.g. hidden_size)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_class, arguments = TINY_CONFIGS[family]
    return transformers.AutoModelForSequenceClassification.from_config(
        getattr(transformers, config_class)(**{**arguments, "num_labels": 2, **overrides})
    )


def batch(seed: int = 0, vocab: int = 100, n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """Token ids that avoid 0 (the pad id of the decoder configs), with a right-padded second row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    ids[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1] * (n // 2))}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family(request) -> str:
    assert request.param in FAMILIES
    return request.param


@pytest.fixture
def bnb_on_avx512_bf16(monkeypatch):
    """bitsandbytes, told that this CPU has AVX512-BF16 (which would switch its Linear4bit to a packed bf16
    path on those hosts only), so that a 4-bit test checks the same thing on every host."""
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    return bnb


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One tokenisation cache for the whole session, as a sweep would share one."""
    return tmp_path_factory.mktemp("token-cache")
