"""IMDB from the Hub, a parquet folder or an original aclImdb/ folder: subsets, a tokenisation cache, batches.

Tokenised subsets are cached on disk under a key made of the tokenizer's content, max_length and the texts
themselves, so every job of a sweep after the first loads them instead of tokenising again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from lora_lab import assets
from lora_lab.atomic import write_bytes_atomic
from lora_lab.config import require
from lora_lab.schema import Fingerprint

SPLITS = ("train", "test")
COLUMNS = ("text", "label")
LABEL_NAMES = ("neg", "pos")


def load_imdb(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """{"train": frame, "test": frame} with columns text (str), label (int) and example_id (str): a stable
    name of the review within its split, "<neg|pos>/<review_id>" where the source numbers its reviews (IMDB's
    ids repeat across the two labels), else the row's index. The frames are shared (see `_read_checked`):
    take subsets of them, never change them in place."""
    source = assets.resolve(cfg.source, cfg.get("local"), "data.source")
    if Path(source).is_dir():
        folder = Path(source).resolve()
        stamp = _stamp(folder)
        return dict(_read_checked(folder, source, stamp)) if stamp else _checked(_read_folder(folder), source)
    if Path(source).is_file():
        raise ValueError(
            f"data.source={source!r} is a file; point it at the folder holding train.parquet and test.parquet"
        )
    if assets.is_path(source):
        raise FileNotFoundError(
            f"data.source={source!r} does not exist; point it at a parquet or aclImdb folder"
        )
    return _checked(_read_hub(cfg.source, cfg.get("local")), source)


def _stamp(folder: Path) -> tuple | None:
    """What tells one state of a parquet folder from another without reading it: each split's size and
    modification time. None for an aclImdb folder (thousands of files), which is read each time instead."""
    files = [folder / f"{s}.parquet" for s in SPLITS]
    if not all(f.is_file() for f in files):
        return None
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@functools.lru_cache(maxsize=2)
def _read_checked(folder: Path, source: str, stamp: tuple) -> dict[str, pd.DataFrame]:
    """A parquet folder read and checked once per process and state of its files: the runs of a sweep in one
    process (Hydra's basic launcher) take subsets of the same frames instead of each reading and checking
    all of IMDB again. `source` is the name the errors give."""
    return _checked(_read_folder(folder), source)


def _checked(frames: dict[str, pd.DataFrame], source: str) -> dict[str, pd.DataFrame]:
    for split, frame in frames.items():
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"data.source={source!r}: the {split} split has no column(s) {missing} "
                f"(found {list(frame.columns)}); IMDB-style data needs 'text' and 'label'"
            )
        if frame.empty:
            raise ValueError(f"data.source={source!r}: the {split} split holds no examples; point it at data")
        _check_contents(frame, f"data.source={source!r}, {split} split")
        frame = frame.reset_index(drop=True).astype({"label": "int64"})
        if "review_id" in frame.columns:
            names = frame["label"].map(dict(enumerate(LABEL_NAMES))).fillna(frame["label"].astype(str))
            ids = names + "/" + frame["review_id"].astype(str)
        else:
            ids = [str(i) for i in range(len(frame))]
        frames[split] = frame[list(COLUMNS)].assign(example_id=ids)
    return frames


def _check_contents(frame: pd.DataFrame, where: str) -> None:
    """Labels 0/1 and real texts, or one line naming what is wrong and where, before anything trains."""
    labels = set(frame["label"].dropna().unique().tolist())
    if frame["label"].isna().any() or not labels <= {0, 1}:
        found = sorted(map(repr, labels)) + (["null"] if frame["label"].isna().any() else [])
        raise ValueError(f"{where}: labels must be 0 (negative) and 1 (positive), found {', '.join(found)}")
    texts = frame["text"]
    bad = (~texts.map(lambda t: isinstance(t, str))) | (texts.map(lambda t: str(t).strip()) == "")
    if bad.any():
        raise ValueError(
            f"{where}: {int(bad.sum())} text(s) are empty, null or not strings (first at row "
            f"{int(bad.to_numpy().argmax())}); drop or fill them"
        )


def _read_folder(path: Path) -> dict[str, pd.DataFrame]:
    if all((path / f"{s}.parquet").is_file() for s in SPLITS):
        return {s: pd.read_parquet(path / f"{s}.parquet") for s in SPLITS}
    if all((path / s / "pos").is_dir() for s in SPLITS):
        return {s: _read_aclimdb_split(path / s) for s in SPLITS}
    raise FileNotFoundError(
        f"{path} holds neither train.parquet/test.parquet nor an aclImdb layout (train/pos, train/neg, ...)"
    )


def _read_aclimdb_split(path: Path) -> pd.DataFrame:
    """The original release: <split>/{neg,pos}/<id>_<stars>.txt, ordered like the Hub's copy."""
    rows = []
    for label, name in enumerate(LABEL_NAMES):
        files = sorted((path / name).glob("*.txt"))
        stray = [f for f in files if not re.fullmatch(r"\d+_\d+\.txt", f.name)]
        if stray:
            raise ValueError(
                f"{stray[0]} is not a review (<id>_<stars>.txt); move it out of the aclImdb folder"
            )
        for number, f in sorted((int(f.name.split("_")[0]), f) for f in files):
            try:
                rows.append((f.read_text(encoding="utf-8"), label, number))
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{f} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it"
                ) from None
    return pd.DataFrame(rows, columns=[*COLUMNS, "review_id"])


def _read_hub(dataset_id: str, local: Mapping | None) -> dict[str, pd.DataFrame]:
    import datasets  # imported here: it is slow to import and only this path needs it

    try:
        ds = datasets.load_dataset(dataset_id)
    except Exception as err:  # the Hub raises many types (connection, not found, offline mode)
        raise FileNotFoundError(f"data {dataset_id!r}: {assets.describe_lookup(dataset_id, local)}") from err
    return {s: ds[s].to_pandas() for s in SPLITS}


def subset(frame: pd.DataFrame, size: int | None, seed: int, key: str) -> pd.DataFrame:
    """A stratified, seeded subset of `size` rows (all rows, in order, when size is None)."""
    if size is None:
        return frame
    if not 0 < size <= len(frame):
        raise ValueError(
            f"data.{key}={size} but the split has {len(frame)} examples; use 1..{len(frame)} or null"
        )
    rng = np.random.default_rng(seed)
    shares = frame["label"].value_counts(normalize=True).sort_index()
    counts = np.floor(shares.to_numpy() * size).astype(int)
    counts[np.argsort(-(shares.to_numpy() * size - counts))[: size - counts.sum()]] += 1  # largest remainders
    picked = [
        rng.choice(np.flatnonzero(frame["label"].to_numpy() == label), n, replace=False)
        for label, n in zip(shares.index, counts, strict=True)
    ]
    return frame.iloc[rng.permutation(np.concatenate(picked))].reset_index(drop=True)


@dataclasses.dataclass
class Encoded:
    """Token ids of a split stored flat (ids[offsets[i]:offsets[i+1]] is example i), with labels and the
    examples' ids (see load_imdb); a linear probe (probe.py) adds what the frozen encoder made of each."""

    ids: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor
    example_ids: list[str] | None = None
    features: torch.Tensor | None = None  # one row per example: the head's input, standing in for the tokens

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


def tokenize(
    frame: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: str | Path,
    progress: bool = True,
    rebuild: bool = False,
) -> Encoded:
    """Token ids for `frame`, from the on-disk cache when this exact tokenisation was done before (and the
    file reads back whole), else tokenised and cached; `rebuild` (force=true) tokenises again regardless."""
    digest = hashlib.sha256()
    digest.update(_tokenizer_fingerprint(tokenizer).encode())
    digest.update(str(max_length).encode())
    for text in frame["text"]:
        digest.update(text.encode())
        digest.update(b"\0")
    digest.update(frame["label"].to_numpy().tobytes())
    path = Path(cache_dir).expanduser() / f"tokens-{digest.hexdigest()[:24]}.pt"
    example_ids = frame["example_id"].tolist() if "example_id" in frame else None
    if path.is_file() and not rebuild:
        cached = _read_cache(path, len(frame))
        if cached is not None:
            return dataclasses.replace(cached, example_ids=example_ids)
        print(f"[lora-lab] token cache {path} is unreadable or truncated; tokenising again", file=sys.stderr)
    texts = frame["text"].tolist()
    pieces = []
    chunks = range(0, len(texts), 1000)
    for start in tqdm(chunks, desc="tokenising", unit="k reviews", leave=False, disable=not progress):
        out = tokenizer(texts[start : start + 1000], truncation=True, max_length=max_length)
        pieces += out["input_ids"]
    lengths = torch.tensor([len(p) for p in pieces])
    encoded = Encoded(
        ids=torch.tensor([t for p in pieces for t in p], dtype=torch.int32),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        labels=torch.tensor(frame["label"].to_numpy(), dtype=torch.long),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"ids": encoded.ids, "offsets": encoded.offsets, "labels": encoded.labels}
    save_tensors(path, tensors)
    return dataclasses.replace(encoded, example_ids=example_ids)


def save_tensors(path: Path, tensors: object) -> Path:
    """torch.save into a disk cache, atomically, with a full disk reported as OSError (write_bytes_atomic)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def _read_cache(path: Path, examples: int) -> Encoded | None:
    """A cached tokenisation, or None when the file does not load or does not hold `examples` whole ones."""
    try:
        cached = Encoded(**torch.load(path))
    except Exception:  # truncated or corrupt: torch raises RuntimeError, EOFError, pickle errors...
        return None
    whole = len(cached.labels) == examples and int(cached.offsets[-1]) == len(cached.ids)
    return cached if whole else None


def splits(cfg: DictConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and evaluation reviews of a run. The training subset follows the run's seed; the
    evaluation subset follows `data.eval_seed`, so every seed of a study is scored on the same reviews and
    runs can be compared example by example. The evaluation set is IMDB's test split, or with
    `data.eval_split=dev` reviews held out of the train split (the training subset is drawn from the rest),
    so hyperparameters can be tuned without looking at the test split."""
    frames = load_imdb(cfg)
    train = frames["train"]
    if cfg.get("eval_split") == "dev":
        evaluation = subset(train, cfg.eval_size, cfg.eval_seed, "eval_size")
        train = train[~train["example_id"].isin(evaluation["example_id"])].reset_index(drop=True)
        require(len(train) > 0, "data.eval_size", cfg.eval_size, "fewer reviews than the train split holds")
    else:
        evaluation = subset(frames["test"], cfg.eval_size, cfg.eval_seed, "eval_size")
    train = subset(train, cfg.train_size, seed, "train_size")
    for name, frame in (("training", train), ("evaluation", evaluation)):
        if frame["label"].nunique() < 2:
            raise ValueError(
                f"the {name} set holds one class only (label {frame['label'].iloc[0]}); a sentiment "
                "classifier needs both: check data.source, or raise data.train_size / data.eval_size"
            )
    return train, evaluation


def fingerprint(frame: pd.DataFrame) -> Fingerprint:
    """What a split of a run holds, to tell it from other data under the same settings: its size and a
    sha256 of its example ids, texts and labels, in order."""
    digest = hashlib.sha256()
    for example_id, text, label in zip(frame["example_id"], frame["text"], frame["label"], strict=True):
        digest.update(f"{example_id}\0{label}\0{text}\0".encode())
    return {"examples": len(frame), "sha256": digest.hexdigest()}


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides the token ids: the fast tokenizer's definition without its call-time truncation and
    padding state (which changes after the first call), or the vocabulary for a slow tokenizer. The definition
    is hashed in the order `to_str` writes it, the same for the same tokenizer in every process (sorting a
    whole vocabulary's keys again was most of the cost)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        body = json.dumps({k: v for k, v in spec.items() if k not in ("truncation", "padding")})
    else:
        body = repr(sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}:{tokenizer.padding_side}:{hashlib.sha256(body.encode()).hexdigest()}"


def batches(
    data: Encoded, batch_size: int, pad_id: int, shuffle: bool, seed: int = 0, pad_left: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches, in the order of `groups`."""
    for idx in groups(data, batch_size, shuffle, seed):
        yield collate(data, idx, pad_id, pad_left)


def groups(data: Encoded, batch_size: int, shuffle: bool, seed: int = 0) -> list[torch.Tensor]:
    """The example indices of each batch. Training (shuffle): shuffled, then grouped by length within
    windows of 50 batches so padding stays small but order stays random. Evaluation: sorted by length,
    longest first."""
    lengths = data.lengths
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data), generator=g)
        window = batch_size * 50
        chunks = [order[i : i + window] for i in range(0, len(order), window)]
        order = torch.cat([c[torch.argsort(lengths[c], descending=True, stable=True)] for c in chunks])
        split = list(order.split(batch_size))
        return [split[i] for i in torch.randperm(len(split), generator=g)]
    return list(torch.argsort(lengths, descending=True, stable=True).split(batch_size))


def collate(data: Encoded, idx: torch.Tensor, pad_id: int, pad_left: bool = False) -> dict[str, torch.Tensor]:
    """Pad the examples `idx` to the longest among them (or take their features, where a probe has them)."""
    if data.features is not None:
        return {"features": data.features[idx], "labels": data.labels[idx]}
    lengths = data.lengths[idx]
    width = int(lengths.max())
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, (i, n) in enumerate(zip(idx.tolist(), lengths.tolist(), strict=True)):
        cols = slice(width - n, width) if pad_left else slice(0, n)
        input_ids[row, cols] = data.ids[data.offsets[i] : data.offsets[i] + n]
        mask[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": data.labels[idx]}
