"""The real decoder LLM in ../shared: SmolLM2-135M-Instruct from its Q4_1 GGUF file. It loads through our
model config, says which weights ran, pools the last real token whichever side pads, and learns."""

from __future__ import annotations

import copy
import hashlib

import pandas as pd
import pytest
import torch
from conftest import ASSETS, IMDB, requires_assets

from lora_lab import data, methods, models
from lora_lab.config import compose

pytestmark = pytest.mark.slow  # the GGUF file is read and dequantised once for the module
SMOLLM = ASSETS / "models" / "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="module")
def smollm():
    """(config, tokenizer, model, four encoded IMDB reviews of different lengths, at most 64 tokens)."""
    cfg = compose(["model=smollm2_135m", "method=qv_r8", "dropout=0"])
    tokenizer = models.load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, pad_token_id=tokenizer.pad_token_id)
    reviews = pd.read_parquet(IMDB / "train.parquet").groupby("label").head(2).reset_index(drop=True)
    texts = [text[: 60 + 90 * i] for i, text in enumerate(reviews["text"])]  # four different lengths
    ids = [tokenizer(t, truncation=True, max_length=64)["input_ids"] for t in texts]
    encoded = data.Encoded(
        ids=torch.tensor([i for row in ids for i in row], dtype=torch.int32),
        offsets=torch.tensor([0, *torch.tensor([len(r) for r in ids]).cumsum(0).tolist()]),
        labels=torch.tensor(reviews["label"].tolist()),
    )
    assert len(set(encoded.lengths.tolist())) > 1, "the reviews must differ in length to test padding"
    return cfg, tokenizer, model, encoded


@requires_assets
def test_the_record_names_the_gguf_weights_and_their_hash(smollm) -> None:
    cfg, _, model, _ = smollm
    weights = models.weights_of(cfg.model)
    gguf = next(SMOLLM.glob("*.gguf"))
    assert (
        weights["file"] == gguf.name
        and weights["source"] == "$LORA_LAB_ASSETS/models/smollm2-135m-instruct-q4_1"
    )
    assert weights["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_hidden_layers == 30
    from gguf import GGUFReader, get_tensor_name_map  # as transformers imports them: the loader's shared ones

    assert get_tensor_name_map.cache_info().hits > 100  # one map built, reused for each module walked
    assert GGUFReader.cache_info().hits >= 2  # parsed for the tokenizer, then kept for config and weights


@requires_assets
def test_last_token_pooling_gives_the_same_logits_padded_left_or_right(smollm) -> None:
    _, tokenizer, model, encoded = smollm
    idx = torch.arange(len(encoded.labels))
    logits = {}
    for pad_left in (False, True):
        batch = data.collate(encoded, idx, tokenizer.pad_token_id, pad_left=pad_left)
        assert (batch["attention_mask"][:, 0 if pad_left else -1] == 0).any()  # some row is padded
        with torch.no_grad():
            logits[pad_left] = model.eval()(**batch).logits
    torch.testing.assert_close(logits[False], logits[True], rtol=1e-4, atol=1e-4)


@requires_assets
def test_a_few_lora_steps_on_real_reviews_lower_the_loss(smollm) -> None:
    cfg, tokenizer, model, encoded = smollm
    model = methods.prepare(copy.deepcopy(model), cfg).train()
    batch = data.collate(encoded, torch.arange(len(encoded.labels)), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
