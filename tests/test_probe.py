"""The linear probe (method=head_only_cached): the head that live head-only training without dropout trains,
from features the disk cache shares between runs of the same frozen weights and tokens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import requires_assets, tiny_model
from helpers import in_process

from lora_lab import methods, probe
from lora_lab.config import compose
from lora_lab.data import Encoded
from lora_lab.train import fit

NO_DROPOUT = {  # every dropout of the tiny configs, off
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "distilbert": {"dropout": 0.0, "attention_dropout": 0.0, "seq_classif_dropout": 0.0},
}


def tokens(n: int, seed: int) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 16, (n,), generator=g)
    return Encoded(
        ids=torch.randint(1, 100, (int(lengths.sum()),), generator=g, dtype=torch.int32),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        labels=torch.randint(0, 2, (n,), generator=g),
    )


def config(method: str, cache: object) -> object:
    trainer = ["epochs=2", "batch_size=8", "log_every=1", "progress=false", "device=cpu", "precision=fp32"]
    return compose([f"method={method}", *(f"trainer.{t}" for t in trainer), f"data.cache_dir={cache}"])


@pytest.mark.parametrize("family", sorted(NO_DROPOUT))
def test_the_probe_trains_the_head_live_head_only_trains_with_dropout_off(family, tmp_path) -> None:
    train, evaluation = tokens(40, seed=1), tokens(24, seed=2)
    live_cfg, probe_cfg = config("head_only", tmp_path), config("head_only_cached", tmp_path)
    live = methods.prepare(tiny_model(family, **NO_DROPOUT[family]), live_cfg)
    live_metrics = fit(live, train, evaluation, live_cfg.trainer, 0.05, seed=3, pad_id=0)

    prepared = methods.prepare(tiny_model(family), probe_cfg)  # dropout on: the probe must not use it
    head, train_f, eval_f = methods.of(probe_cfg).inputs(prepared, train, evaluation, probe_cfg)
    probe_metrics = fit(head, train_f, eval_f, probe_cfg.trainer, 0.05, seed=3, pad_id=0)

    assert isinstance(head, probe.Probe) and train_f.features.shape == (40, 32)
    assert probe_metrics.train_loss_curve == pytest.approx(live_metrics.train_loss_curve, abs=1e-5)
    torch.testing.assert_close(head.head.weight, live.classifier.weight, atol=1e-5, rtol=1e-4)
    first, last = live_metrics.train_loss_curve[0], live_metrics.train_loss_curve[-1]
    assert first != pytest.approx(last, abs=1e-3)  # the head did train
    got, want = probe_metrics.predictions, live_metrics.predictions
    assert got["prob_pos"] == pytest.approx(want["prob_pos"], abs=1e-5)
    assert probe_metrics.train_tokens_per_s is None  # it read no tokens


def test_features_come_from_the_cache_for_the_same_weights_and_tokens_only(tmp_path, monkeypatch) -> None:
    model = tiny_model("bert")
    data = tokens(12, seed=0)

    def read() -> torch.Tensor:
        cpu = torch.device("cpu")
        cached = probe.cached(model, model.classifier, [data], tmp_path, 8, 0, cpu, "fp32", progress=False)
        return cached[0].features

    first = read()
    encoded = probe.encode
    monkeypatch.setattr(probe, "encode", lambda *a, **k: pytest.fail("encoded again, not read from cache"))
    torch.testing.assert_close(read(), first)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the head is not part of what the features depend on
    torch.testing.assert_close(read(), first)
    monkeypatch.setattr(probe, "encode", encoded)
    with torch.no_grad():
        model.bert.pooler.dense.bias.add_(1.0)  # a frozen weight is
    assert not torch.allclose(read(), first)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2


def test_a_head_that_reads_every_position_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="use method=head_only$"):
        methods.prepare(tiny_model("llama"), compose(["method=head_only_cached"]))


@pytest.mark.slow
@requires_assets
def test_seeds_of_real_minilm_share_the_encoded_evaluation_reviews(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    run = ["method=head_only_cached", "model=minilm", "data.train_size=64", "data.eval_size=64"]
    for seed in (0, 1):
        args = [*run, "data.max_length=64", "trainer.progress=false", f"seed={seed}"]
        assert in_process(tmp_path, cache, monkeypatch, args) == 0
    # two training subsets and one evaluation set, encoded once: the second seed read it from the cache
    assert len(list(cache.glob("features-*.pt"))) == 3
    runs = sorted((tmp_path / "results" / "default" / "runs").glob("*.json"))
    recs = [json.loads(p.read_text()) for p in runs]
    assert [r["label"] for r in recs] == ["Classification Head Only (cached features)"] * 2
    assert all(r["trainable_params"] == 384 * 2 + 2 for r in recs)  # MiniLM's head, as head-only's


def test_the_dropout_seed_moves_only_dropout_and_the_order_seed_only_the_batches(tmp_path) -> None:
    """Without any dropout, the dropout seed changes nothing; the order seed changes the run; with dropout on
    and the order fixed, the dropout seed changes it (run.py feeds them dropout_seed and data_order_seed)."""
    train, evaluation = tokens(40, seed=1), tokens(24, seed=2)
    cfg = config("head_only", tmp_path)

    def curve(family_kw: dict, seed: int, order_seed: int) -> list[float]:
        torch.manual_seed(0)
        model = methods.prepare(tiny_model("bert", **family_kw), cfg)
        return fit(
            model, train, evaluation, cfg.trainer, 0.05, seed=seed, pad_id=0, order_seed=order_seed
        ).train_loss_curve

    quiet = NO_DROPOUT["bert"]
    assert curve(quiet, seed=1, order_seed=5) == curve(quiet, seed=2, order_seed=5)
    assert curve(quiet, seed=1, order_seed=5) != curve(quiet, seed=1, order_seed=6)
    assert curve({}, seed=1, order_seed=5) != curve({}, seed=2, order_seed=5)
