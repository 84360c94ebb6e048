"""The run record's schema: the fields the runner writes and the analysis reads, one JSON file per run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypedDict

from lora_lab.identity import digest, identity_of


class Seeds(TypedDict):
    """The seed of each source of randomness, resolved (config.seeds_of)."""

    init: int
    data_order: int
    dropout: int


class Fingerprint(TypedDict):
    """What a split of a run held (data.fingerprint): its size and a sha256 of its ids, texts and labels."""

    examples: int
    sha256: str


class DataFingerprints(TypedDict):
    train: Fingerprint
    eval: Fingerprint


class Weights(TypedDict):
    """The pretrained weights a run loaded (models.weights_of)."""

    source: str
    file: str | None
    sha256: str | None  # of the file, where it is a local one


class PredictionsFile(TypedDict):
    """The per-example predictions beside the record (store.write_predictions)."""

    file: str
    sha256: str


class Gpu(TypedDict):
    """The GPU a run used (hardware.gpu_of)."""

    name: str
    capability: str
    memory_gb: float
    cuda: str | None
    driver: str | None


@dataclasses.dataclass
class Record:
    """One run, as the runner writes it and the analysis and tests read it. Fields a run did not reach (a
    failed run's metrics) stay None; records written before a field existed read as None there too."""

    name: str
    experiment: str
    label: str  # the reference table's name of the row, e.g. "Q+V (r=8)"
    method: str  # the method's kind: a key of methods.METHODS
    seed: int
    model: str
    config: dict  # the resolved config the run ran with
    status: str  # complete | failed
    config_id: str | None = None  # the identity hash without the seed: what seeds of one configuration share
    targets: str | list | None = None
    rank: int | None = None
    impl: str | None = None  # ours | peft (methods with an implementation)
    seeds: Seeds | None = None
    quant: str | None = None
    weights: Weights | None = (
        None  # pretrained weights loaded: {"source", "file", "sha256"} (models.weights_of)
    )
    data: DataFingerprints | None = (
        None  # {"train"|"eval": {"examples", "sha256"}} (data.fingerprint) of what it ran on
    )
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_pct: float | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    reason: str | None = None  # why a run failed
    precision: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    eval_loss: float | None = None
    predictions: PredictionsFile | None = None  # {"file": <name>.preds.parquet, "sha256": ...}
    collapsed: str | None = None  # why the run counts as collapsed (store.collapse); None: it learned
    train_loss_curve: list | None = None
    steps: int | None = None
    not_applicable: list | None = None  # settings the job was given that its method does not read (ignored)
    load_s: float | None = None  # reading data and weights, tokenising, preparing the method (or probe.py's)
    train_wall_s: float | None = None
    eval_wall_s: float | None = None  # scoring the evaluation set
    train_examples_per_s: float | None = None
    train_tokens_per_s: float | None = None  # the reviews' own tokens per second of training
    train_padded_tokens_per_s: float | None = None  # the tokens computed on, padding included
    peak_memory_mb: float | None = None  # training's peak, before scoring
    peak_memory_of: str | None = None  # what peak_memory_mb measures: CUDA tensors, or the process's RSS
    peak_memory_reserved_mb: float | None = None  # CUDA only: the caching allocator's peak
    gpu: Gpu | None = None  # train.gpu_of: name, capability, memory, CUDA and driver versions
    adapter_bytes: int | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    versions: dict | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    python: str | None = None
    machine: str | None = None

    @classmethod
    def check_fields(cls, names: Iterable[str]) -> None:
        """Names outside this schema are an error: the runner checks what it will write before it trains."""
        unknown = set(names) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown record fields {sorted(unknown)}: add them to schema.Record, or update lora-lab to "
                "read a record a newer version wrote"
            )

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """A record read from JSON; unknown keys (from a newer schema) are an error, missing ones None."""
        cls.check_fields(data)
        return cls(**data)

    def id_of_config(self) -> str:
        """config_id, computed from the stored config for records written before the field existed."""
        return self.config_id or digest(identity_of(self.config, self.method, with_seed=False))
