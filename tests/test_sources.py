"""The randomness-sources analysis (analysis/sources.py): which runs it reads, its variances and shares, and a
comparison that stays inconclusive at the rate it promises when the sources move accuracy alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_lab.analysis import sources
from lora_lab.analysis.plot import plot_sources

SPREAD = {"init": 2.0, "data_order": 0.1, "dropout": 0.5}  # pp of accuracy per step of the source's value


def runs_varying_one_source_at_a_time(values: int = 6) -> pd.DataFrame:
    """A study as imdb_seed_sources runs it: seed 0, one source over 0..values-1, the others at 0; the run at
    0, 0, 0 is one record. Accuracy moves by SPREAD[source] per unit of that source's value."""
    records = {}
    for source in SPREAD:
        for v in range(values):
            seeds = {s: (v if s == source else 0) for s in SPREAD}
            acc = 80 + sum(SPREAD[s] * (seeds[s] - (values - 1) / 2) * (-1) ** seeds[s] for s in SPREAD)
            records[tuple(seeds.values())] = {"seeds": seeds, "accuracy": acc / 100}
    frame = pd.DataFrame(list(records.values()))
    return frame.assign(label="Q+V (r=8)", impl="ours", seed=0)


def test_each_source_is_read_from_the_runs_that_vary_it_alone() -> None:
    runs = runs_varying_one_source_at_a_time()
    assert len(runs) == 16  # 3 x 6, the shared run once
    sets = sources.varied(runs)
    assert list(sets["source"]) == ["init", "data_order", "dropout"]
    assert all(values == tuple(range(6)) for values in sets["values"])
    table = sources.shares(sets, draws=20_000)
    assert table["share"].sum() == pytest.approx(1.0)
    for row in table.itertuples():
        acc = dict(zip(sets["source"], sets["accuracy_pp"], strict=True))[row.source]
        assert row.variance == pytest.approx(np.var(acc, ddof=1))
        assert row.variance_low < row.variance < row.variance_high
        assert row.share_low < row.share < row.share_high
    assert table.set_index("source")["share"].idxmax() == "init"


def test_a_source_with_a_much_larger_variance_is_a_finding_and_alike_ones_are_not() -> None:
    table = sources.shares(sources.varied(runs_varying_one_source_at_a_time()), draws=1000)
    verdicts = {(p.a, p.b): p.verdict for p in sources.compare(table).itertuples()}
    assert verdicts[("init", "data_order")] == "init moves accuracy more"  # variance ratio 400
    assert verdicts[("init", "dropout")] == "init moves accuracy more"  # 16: beyond F(5, 5) at 98.3%
    assert verdicts[("data_order", "dropout")] == "dropout moves accuracy more"  # 1/25


@pytest.mark.slow
def test_when_sources_move_accuracy_alike_a_verdict_comes_at_most_at_the_stated_rate() -> None:
    """2,000 studies of three sources with equal variance, six values each: the share of studies with any
    verdict stays within the family's 5% (plus three standard errors of the simulation)."""
    rng = np.random.default_rng(1)
    sims, any_verdict = 2000, 0
    for _ in range(sims):
        sets = pd.DataFrame(
            {
                "label": "row",
                "impl": "ours",
                "source": list(SPREAD),
                "values": [tuple(range(6))] * 3,
                "accuracy_pp": [tuple(80 + rng.normal(0, 0.7, 6)) for _ in SPREAD],
            }
        )
        pairs = sources.compare(sources.shares(sets, draws=10))
        any_verdict += (pairs["verdict"] != "inconclusive").any()
    rate, se = any_verdict / sims, (0.05 * 0.95 / sims) ** 0.5
    assert rate <= 0.05 + 3 * se
    assert rate > 0.01  # the test can see a verdict at all: not a comparison that never decides


def test_a_study_over_the_master_seed_alone_writes_no_sources_report(tmp_path) -> None:
    runs = pd.DataFrame(
        {
            "label": "Q+V (r=8)",
            "impl": "ours",
            "seed": [0, 1, 2],
            "seeds": [{s: m for s in SPREAD} for m in (0, 1, 2)],
            "accuracy": [0.8, 0.81, 0.79],
        }
    )
    assert sources.varied(runs).empty
    assert sources.write(sources.varied(runs), tmp_path, [], None) == []
    assert not list(tmp_path.iterdir())


def test_a_study_of_sources_writes_its_report_and_its_plot(tmp_path) -> None:
    sets = sources.varied(runs_varying_one_source_at_a_time())
    written = sources.write(sets, tmp_path, ["Made by a test."], None, title="sources")
    assert [p.name for p in written] == ["sources.md", "sources.csv", "sources.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    figure = plot_sources(sets)
    [ax] = figure.axes  # one row (label, impl): one panel
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["init", "data_order", "dropout"]
    assert sum(len(c.get_offsets()) for c in ax.collections if len(c.get_offsets()) > 1) == 18  # a dot a run


def test_a_source_whose_values_tie_decides_nothing() -> None:
    """Accuracy on a fixed test set moves in steps of one example: two values can give the same accuracy, a
    variance of 0 that an F interval would turn into an infinite ratio and a verdict."""
    sets = pd.DataFrame(
        {
            "label": "row",
            "impl": "ours",
            "source": list(SPREAD),
            "values": [(0, 1)] * 3,
            "accuracy_pp": [(82.14, 82.64), (82.64, 81.48), (82.64, 82.64)],
        }
    )
    table = sources.shares(sets, draws=100)
    pairs = sources.compare(table).set_index(["a", "b"])["verdict"]
    assert pairs[("init", "dropout")] == "inconclusive: every value of dropout gave the same accuracy (ties)"
    assert pairs[("data_order", "dropout")].startswith("inconclusive: ")
    assert pairs[("init", "data_order")] == "inconclusive"
    shown = sources.to_markdown(table, sources.compare(table), None)
    assert "| row (ours) | dropout | 2 | 82.64 | 0: every value gave the same accuracy | — |" in shown
