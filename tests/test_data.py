"""IMDB loading from each source, stratified subsets, the tokenisation cache, batching."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import IMDB, MINILM, requires_assets
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from lora_lab import checks, data


def frame(n_pos: int, n_neg: int) -> pd.DataFrame:
    texts = [f"review {i} " + "word " * (i % 7) for i in range(n_pos + n_neg)]
    return pd.DataFrame({"text": texts, "label": [1] * n_pos + [0] * n_neg})


def test_subset_is_stratified_seeded_and_exact() -> None:
    df = frame(300, 100)
    a = data.subset(df, 41, seed=0, key="train_size")
    assert len(a) == 41 and a["label"].sum() == 31  # 41 * 3/4 = 30.75 -> 31 positives
    assert a.equals(data.subset(df, 41, seed=0, key="train_size"))
    assert not a.equals(data.subset(df, 41, seed=1, key="train_size"))
    assert data.subset(df, None, seed=0, key="train_size") is df
    with pytest.raises(ValueError, match="data.eval_size=401 but the split has 400"):
        data.subset(df, 401, seed=0, key="eval_size")


def test_aclimdb_folder(tmp_path) -> None:
    for split in ("train", "test"):
        for name, reviews in (("neg", {10: "awful", 2: "bad"}), ("pos", {7: "great"})):
            (tmp_path / split / name).mkdir(parents=True)
            for review_id, text in reviews.items():
                (tmp_path / split / name / f"{review_id}_5.txt").write_text(text)
    frames = data.load_imdb(OmegaConf.create({"source": str(tmp_path), "local": None}))
    assert frames["train"].to_dict("list") == {
        "text": ["bad", "awful", "great"],
        "label": [0, 0, 1],
        "example_id": ["neg/2", "neg/10", "pos/7"],
    }
    load = lambda: data.load_imdb(OmegaConf.create({"source": str(tmp_path), "local": None}))  # noqa: E731
    (tmp_path / "test" / "pos" / "3_9.txt").write_bytes(b"caf\xe9")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"3_9.txt is not UTF-8 text \(unexpected end of data at byte 3\)"):
        load()
    (tmp_path / "test" / "pos" / "3_9.txt").unlink()
    (tmp_path / "train" / "neg" / "notes.txt").write_text("to do")
    with pytest.raises(ValueError, match=r"notes.txt is not a review \(<id>_<stars>.txt\); move it out"):
        load()
    with pytest.raises(ValueError, match="is a file; point it at the folder holding train.parquet"):
        data.load_imdb(
            OmegaConf.create({"source": str(tmp_path / "train" / "neg" / "2_5.txt"), "local": None})
        )


def test_a_parquet_folder_is_read_once_per_process_until_its_files_change(tmp_path, monkeypatch) -> None:
    for split in ("train", "test"):
        frame(2, 2).to_parquet(tmp_path / f"{split}.parquet")
    load = lambda: data.load_imdb(OmegaConf.create({"source": str(tmp_path), "local": None}))  # noqa: E731
    first = load()
    monkeypatch.setattr(pd, "read_parquet", lambda path: pytest.fail(f"{path} was read again"))
    assert load()["train"] is first["train"]  # a sweep's second run: no read, no check
    monkeypatch.undo()
    frame(3, 2).to_parquet(tmp_path / "train.parquet")  # rewritten in place: another size
    assert len(load()["train"]) == 5


@requires_assets
def test_shared_parquet_is_full_imdb() -> None:
    frames = data.load_imdb(OmegaConf.create({"source": str(IMDB), "local": None}))
    for split in ("train", "test"):
        assert len(frames[split]) == 25_000 and frames[split]["label"].sum() == 12_500
        assert list(frames[split].columns) == ["text", "label", "example_id"]
        assert frames[split]["example_id"].is_unique  # review ids repeat across labels; ours do not
        assert frames[split]["example_id"].iloc[[0, -1]].tolist() == ["neg/0", "pos/12499"]


def load_from_hub(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    code = (
        "from omegaconf import OmegaConf; from lora_lab import data; "
        "data.load_imdb(OmegaConf.create({'source': 'stanfordnlp/imdb', "
        "'local': {'holds': 'stanfordnlp/imdb', 'path': 'data/imdb'}}))"
    )
    inherited = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env = {**inherited, "LORA_LAB_ASSETS": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), **env}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return out, time.perf_counter() - start


@pytest.mark.slow
def test_unreachable_hub_is_found_out_at_once(tmp_path) -> None:
    # A closed local port stands in for a Hub this machine cannot reach.
    out, seconds = load_from_hub(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert out.returncode != 0 and seconds < 30
    assert f"data.source 'stanfordnlp/imdb' is not under {tmp_path}/data/imdb and" in out.stderr
    assert "the Hugging Face Hub is unreachable (127.0.0.1:" in out.stderr
    assert "set LORA_LAB_ASSETS to a folder holding data/imdb" in out.stderr


@pytest.mark.slow
def test_offline_mode_reads_the_cache_and_says_what_was_tried(tmp_path) -> None:
    out, _ = load_from_hub(tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert out.returncode != 0
    assert f"not under {tmp_path}/data/imdb, and the Hub id 'stanfordnlp/imdb' failed" in out.stderr


@requires_assets
@pytest.mark.slow
def test_dev_split_holds_reviews_out_of_training_and_leaves_test_alone(tmp_path) -> None:
    folder = tmp_path / "imdb"
    folder.mkdir()
    train = frame(60, 60).assign(text=lambda f: "train " + f["text"])
    train.to_parquet(folder / "train.parquet")
    frame(30, 30).assign(text=lambda f: "test " + f["text"]).to_parquet(folder / "test.parquet")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    settings = {"source": str(folder), "local": None, "train_size": None, "eval_size": 20, "eval_seed": 0}
    settings |= {"max_length": 16, "cache_dir": str(tmp_path / "cache")}

    def splits(**changes: object) -> tuple[list[str], list[str]]:
        cfg = OmegaConf.create(settings | changes)
        checks.check_data(cfg)
        return tuple(
            tokenizer.batch_decode([s.ids[s.offsets[i] : s.offsets[i + 1]] for i in range(len(s))])
            for s in (data.tokenize(f, tokenizer, 16, cfg.cache_dir, False) for f in data.splits(cfg, seed=0))
        )

    fit, test = splits()
    assert len(fit) == 120 and len(test) == 20 and all("] test review" in t for t in test)
    fit, dev = splits(eval_split="dev")
    assert len(fit) == 100 and len(dev) == 20 and not set(fit) & set(dev)
    assert set(fit) | set(dev) == set(splits()[0]) and all("] train review" in t for t in dev)
    assert splits(eval_split="dev", eval_seed=1)[1] != dev
    with pytest.raises(ValueError, match="data.eval_size=None is not allowed; use a number of reviews"):
        splits(eval_split="dev", eval_size=None)
    with pytest.raises(
        ValueError, match="data.eval_size=120 is not allowed; use fewer reviews than the train"
    ):
        splits(eval_split="dev", eval_size=120)  # every training review held out: nothing left to train on
    with pytest.raises(ValueError, match="data.eval_split='val' is not allowed; use null"):
        splits(eval_split="val")


@requires_assets
def test_tokenisation_is_cached_across_tokenizer_state(tmp_path) -> None:
    df = frame(20, 20)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    first = data.tokenize(df, tokenizer, 16, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and int(first.lengths.max()) <= 16
    calls = []
    fresh = AutoTokenizer.from_pretrained(MINILM)
    fresh("warm up", truncation=True, max_length=8)  # changes the backend's truncation state
    original = type(fresh).__call__
    monkey = pytest.MonkeyPatch()
    monkey.setattr(type(fresh), "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    try:
        again = data.tokenize(df, fresh, 16, tmp_path)
    finally:
        monkey.undo()
    assert not calls and list(tmp_path.iterdir()) == files
    assert torch.equal(again.ids, first.ids) and torch.equal(again.labels, first.labels)
    data.tokenize(df, tokenizer, 32, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # another max_length, another entry


@requires_assets
def test_a_broken_token_cache_is_named_and_rebuilt(tmp_path, capsys) -> None:
    df = frame(20, 20)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    first = data.tokenize(df, tokenizer, 16, tmp_path)
    [path] = tmp_path.iterdir()
    whole = path.read_bytes()
    for broken in (whole[: len(whole) // 2], b"not a tensor file"):
        path.write_bytes(broken)
        again = data.tokenize(df, tokenizer, 16, tmp_path)
        assert f"token cache {path} is unreadable or truncated; tokenising again" in capsys.readouterr().err
        assert torch.equal(again.ids, first.ids) and path.read_bytes() != broken
    stamp = path.stat().st_mtime_ns
    data.tokenize(df, tokenizer, 16, tmp_path, rebuild=True)  # force=true: tokenised again regardless
    assert path.stat().st_mtime_ns != stamp


def encoded(lengths: list[int]) -> data.Encoded:
    ids = torch.cat([torch.arange(1, n + 1, dtype=torch.int32) for n in lengths])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)])
    return data.Encoded(ids=ids, offsets=offsets, labels=torch.arange(len(lengths)))  # labels name examples


def test_training_batches_cover_everything_once_and_are_length_grouped() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(200)]
    enc = encoded(lengths)
    seen, padding = [], 0
    for b in data.batches(enc, 8, pad_id=0, shuffle=True, seed=3):
        rows = b["attention_mask"].sum(1)
        seen += rows.tolist()
        padding += int((b["attention_mask"] == 0).sum())
    assert sorted(seen) == sorted(lengths)
    random_padding = sum(
        int((b["attention_mask"] == 0).sum())
        for b in (
            data.collate(enc, idx, 0)
            for idx in torch.randperm(200, generator=torch.Generator().manual_seed(3)).split(8)
        )
    )
    assert padding < random_padding / 3
    first = [b["labels"].tolist() for b in data.batches(enc, 8, 0, shuffle=True, seed=3)]
    assert first == [b["labels"].tolist() for b in data.batches(enc, 8, 0, shuffle=True, seed=3)]
    assert first != [b["labels"].tolist() for b in data.batches(enc, 8, 0, shuffle=True, seed=4)]


def test_eval_batches_are_length_sorted_and_padding_side_is_respected() -> None:
    enc = encoded([3, 5, 2])
    [b] = list(data.batches(enc, 8, pad_id=0, shuffle=False))
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [1, 2, 0, 0, 0]]
    [left] = list(data.batches(enc, 8, pad_id=0, shuffle=False, pad_left=True))
    assert left["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 1, 2, 3], [0, 0, 0, 1, 2]]
    assert left["attention_mask"].tolist()[2] == [0, 0, 0, 1, 1]


@requires_assets
def test_progress_false_keeps_tokenisation_quiet(tmp_path, capsys) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    data.tokenize(frame(5, 5), tokenizer, 16, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    data.tokenize(frame(5, 5), tokenizer, 16, tmp_path / "shown")
    assert "tokenising" in capsys.readouterr().err
