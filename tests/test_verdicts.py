"""The verdict engine on simulated studies of known variance components: seed variance must be able to stop a
claim that the test examples alone would pass, a null must be called `holds` at most 5% of the time, and the
planner's seed count must reach the power it states."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lora_lab import store
from lora_lab.analysis import claims as claims_module
from lora_lab.analysis import findings, stats
from lora_lab.analysis import plan as plan_module
from lora_lab.analysis.plot import plot_findings
from lora_lab.config import CONF_DIR

A, B = "Row A", "Row B"


def decide(a: np.ndarray, b: np.ndarray, claim: dict | list, collapsed: dict | None = None) -> pd.DataFrame:
    """findings.check on two rows given as examples x seeds correctness (or any value) matrices: one claim, or
    a family of several (each judged at the family's level)."""
    collapsed = collapsed or {}
    index = [f"e{i}" for i in range(len(a))]
    correct = {
        "a": pd.DataFrame(a, index=index),
        "b": pd.DataFrame(b, index=index[: len(b)] if len(b) == len(a) else [f"x{i}" for i in range(len(b))]),
    }
    table = pd.DataFrame(
        {
            "configuration": [A, B],
            "impl": ["ours", "ours"],
            "config_id": ["a", "b"],
            "n": [a.shape[1], b.shape[1]],
            "collapsed_seeds": [collapsed.get("a", ()), collapsed.get("b", ())],
        }
    )
    claims = claim if isinstance(claim, list) else [claim]
    return findings.check([claims_module.parse(c) for c in claims], table, correct)


def binary_study(rng: np.random.Generator, k: int, n: int, effect: float, seed_sd: float) -> tuple:
    """Correctness of two methods, k seeds each, on n shared examples of varying difficulty: logit =
    difficulty + method effect (A only) + a per-run seed shift. Seeds pair (same seed, same shift source)."""
    difficulty = rng.normal(1.5, 1.5, size=(n, 1))
    runs = []
    for shift in (effect, 0.0):
        logit = difficulty + shift + rng.normal(0, seed_sd, size=(1, k))
        runs.append((rng.random((n, k)) < 1 / (1 + np.exp(-logit))).astype(float))
    return runs


BETTER = {"better": {"a": A, "b": B}}


def test_the_crossed_variance_matches_a_hand_computation() -> None:
    y = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # 4 examples x 2 seeds
    n, k, grand = 4, 2, y.mean()
    ms_seed = n * ((y.mean(0) - grand) ** 2).sum() / (k - 1)  # 4 * (0.125 + 0.125) = 1.0
    ms_ex = k * ((y.mean(1) - grand) ** 2).sum() / (n - 1)  # 2 * 0.5 / 3
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + grand
    ms_err = (resid**2).sum() / ((n - 1) * (k - 1))
    fit = stats.Crossed.fit(y)
    assert fit.seed_var == pytest.approx((ms_seed - ms_err) / n)
    assert fit.example_var == pytest.approx(max(0.0, (ms_ex - ms_err) / k))
    var = (max(ms_seed, ms_err) + max(ms_ex, ms_err) - ms_err) / (k * n)
    assert fit.se_df()[0] == pytest.approx(math.sqrt(var))
    one = stats.Crossed.fit(y[:, :1])  # one seed: the binomial standard error of its accuracy
    assert one.se_df() == (pytest.approx(math.sqrt(y[:, 0].var(ddof=1) / n)), n - 1)


def test_an_effect_real_on_examples_but_swamped_by_seed_variance_is_inconclusive() -> None:
    rng = np.random.default_rng(5)
    a, b = binary_study(rng, k=3, n=5000, effect=0.1, seed_sd=0.3)
    d = (a - b).mean(axis=1)  # what a test holding the trained models fixed would see
    z = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert z > 3  # examples alone: "significant"
    result = decide(a, b, BETTER).iloc[0]
    assert result["diff_pp"] > 0 and result["verdict"] == "inconclusive"
    assert "more test examples cannot settle this" in result["to_decide"]
    assert result["seeds_needed_unlimited_examples"] > 3


@pytest.mark.slow
@pytest.mark.parametrize("seed_sd", [0.3, 0.05], ids=["seeds-dominate", "seeds-hidden-in-example-noise"])
def test_under_a_null_with_seed_variance_false_holds_are_at_most_five_percent(seed_sd: float) -> None:
    rng = np.random.default_rng(2)
    studies = 300
    holds = sum(
        decide(*binary_study(rng, k=3, n=500, effect=0.0, seed_sd=seed_sd), BETTER).iloc[0]["verdict"]
        == "holds"
        for _ in range(studies)
    )
    assert holds / studies <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / studies)


def gaussian_study(rng: np.random.Generator, truth: stats.Crossed, k: int) -> np.ndarray:
    """An examples x seeds matrix of paired differences drawn from the crossed model with `truth`'s
    components."""
    n = truth.examples
    return (
        truth.mean
        + rng.normal(0, math.sqrt(truth.seed_var), size=(1, k))
        + rng.normal(0, math.sqrt(truth.example_var), size=(n, 1))
        + rng.normal(0, math.sqrt(truth.residual_var), size=(n, k))
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "claim",
    [BETTER, {"equivalent": {"a": A, "b": B, "margin_pp": 4.0}}],
    ids=["better", "equivalent"],
)
def test_the_planners_seed_count_reaches_its_power_in_simulation(claim: dict) -> None:
    truth = stats.Crossed(
        mean=0.02, seeds=3, examples=400, seed_var=0.02**2, example_var=0.01, residual_var=0.2, per_seed=()
    )
    parsed = claims_module.parse(claim)
    needed = stats.seeds_needed(lambda k: parsed.power(truth, findings.ALPHA, k, truth.examples), 3)
    assert 3 < needed < 60
    rng = np.random.default_rng(3)
    studies = 300
    hits = 0
    for _ in range(studies):
        d = gaussian_study(rng, truth, needed)
        hits += decide(d, np.zeros_like(d), claim).iloc[0]["verdict"] == "holds"
    assert hits / studies >= stats.POWER - 3 * math.sqrt(0.8 * 0.2 / studies)
    # and one seed fewer falls short of what `needed` reaches: the count is the smallest
    assert parsed.power(truth, findings.ALPHA, needed - 1, truth.examples) < stats.POWER


def test_at_chance_is_the_one_sided_binomial_test_at_its_level() -> None:
    """Around the boundary, a run is "at chance" exactly when scipy's binomial test cannot reject chance."""
    labels = np.arange(200) % 3 == 0  # the commoner label (False): 133 of them
    for correct in range(140, 160):
        pred = labels.copy()
        pred[correct:] = ~pred[correct:]
        p = scipy_stats.binomtest(correct, 200, 133 / 200, alternative="greater").pvalue
        assert ("at chance" in (store.collapse(pred, labels) or "")) == (p >= store.CHANCE_P), correct


def test_a_collapsed_run_is_flagged_and_its_claim_shown_both_ways() -> None:
    labels = np.arange(1000) % 2
    assert "one class" in store.collapse(np.ones(1000, dtype=int), labels)
    coin = np.random.default_rng(4).integers(0, 2, size=1000)
    assert "at chance" in store.collapse(coin, labels)
    assert store.collapse(np.where(np.arange(1000) < 800, labels, 1 - labels), labels) is None
    rng = np.random.default_rng(5)
    a, b = binary_study(rng, k=4, n=2000, effect=1.0, seed_sd=0.05)
    a[:, 3] = rng.integers(0, 2, size=2000)  # seed 3 of A right on half the examples: at chance
    result = decide(a, b, BETTER, collapsed={"a": (3,)})
    assert list(result["variant"]) == ["", findings.WITHOUT_COLLAPSED]
    assert result.iloc[0]["collapsed_runs"] == f"seed 3: {A} (ours)"
    # with the at-chance seed in, the claim is inconclusive; leaving it out, and only it, makes it hold
    assert result.iloc[0]["leave_one_out"] == "3 of 4 inconclusive; without seed 3: holds"
    assert result.iloc[1]["leave_one_out"] == "3 of 3 holds"
    assert result.iloc[1]["seeds"] == 3 and result.iloc[1]["verdict"] == "holds"
    assert result.iloc[1]["diff_pp"] > result.iloc[0]["diff_pp"]


def test_a_claim_naming_no_row_is_an_error_listing_the_rows() -> None:
    a = np.ones((10, 2))
    with pytest.raises(ValueError, match=r"'Row C' \(impl ours\) names no row of the study.*Row A \(ours\)"):
        decide(a, a, {"better": {"a": "Row C", "b": B}})
    with pytest.raises(ValueError, match="lacks b"):
        claims_module.parse({"better": {"a": A}})
    with pytest.raises(ValueError, match="different test examples"):
        decide(a, np.ones((9, 2)), BETTER)


def test_one_seed_decides_nothing() -> None:
    a, b = binary_study(np.random.default_rng(6), k=1, n=3000, effect=2.0, seed_sd=0.1)
    result = decide(a, b, BETTER).iloc[0]
    assert result["diff_pp"] > 10 and result["verdict"] == "inconclusive"
    assert "run at least 2" in result["to_decide"]
    assert not plot_findings(decide(a, b, BETTER)).axes[0].containers  # no error bar to draw, no error


def test_the_stability_rate_has_a_clopper_pearson_interval() -> None:
    table = pd.DataFrame(
        {"configuration": ["X"], "impl": ["ours"], "n": [3], "collapsed_seeds": [(1,)], "config_id": ["x"]}
    )
    row = findings.stability(table).iloc[0]
    exact = scipy_stats.beta.ppf([0.025, 0.975], [1, 2], [3, 2])  # 1 of 3: Beta(1, 3) and Beta(2, 2)
    assert (row["collapsed"], row["runs"]) == (1, 3)
    assert (row["rate_low"], row["rate_high"]) == (
        pytest.approx(100 * exact[0]),
        pytest.approx(100 * exact[1]),
    )


def independent_se(d: np.ndarray) -> float:
    """The crossed model's standard error of the mean, written apart from stats.Crossed: the spread of the
    seeds' means (at least what the residual alone would give them) over k, plus the examples' shared share
    (their mean square beyond the residual, over k n)."""
    n, k = d.shape
    seed_means, example_means = d.mean(axis=0), d.mean(axis=1)
    residual = d - seed_means[None, :] - example_means[:, None] + d.mean()
    ms_residual = (residual**2).sum() / ((n - 1) * (k - 1))
    ms_examples = k * ((example_means - d.mean()) ** 2).sum() / (n - 1)
    seeds = max(seed_means.var(ddof=1), ms_residual / n)
    return math.sqrt(seeds / k + max(0.0, ms_examples - ms_residual) / (k * n))


EQUIVALENT = {"equivalent": {"a": A, "b": B, "margin_pp": 2.0}}


def test_tost_takes_the_larger_one_sided_p_on_the_seeds_degrees_of_freedom() -> None:
    """A study whose difference sits near +margin: one side is certain, the other is not; TOST's p is the
    larger, each one-sided test a t on k - 1 df (a wrong engine taking the smaller, or k df, fails here)."""
    truth = stats.Crossed(
        mean=0.017, seeds=4, examples=400, seed_var=0.004**2, example_var=0.01, residual_var=0.1, per_seed=()
    )
    d = gaussian_study(np.random.default_rng(11), truth, 4)
    se, df = independent_se(d), d.shape[1] - 1
    lower = scipy_stats.t.sf((d.mean() + 0.02) / se, df)  # null: a - b <= -margin
    upper = scipy_stats.t.cdf((d.mean() - 0.02) / se, df)  # null: a - b >= +margin
    assert lower < 0.025 < 0.25 < upper  # the two sides disagree
    result = decide(d, np.zeros_like(d), EQUIVALENT).iloc[0]
    assert result["df"] == df
    assert result["p"] == pytest.approx(max(lower, upper), rel=1e-6)


@pytest.mark.slow
def test_equivalence_holds_exactly_when_both_one_sided_tests_pass_at_the_familys_level() -> None:
    """TOST at alpha / K a side, K the claims in the family: its interval is the (1 - 2 alpha / K) one.
    Studies near the margin put some p-values between alpha / K and 2 alpha / K, where an engine at twice the
    stated alpha would say holds."""
    truth = stats.Crossed(
        mean=0.0, seeds=4, examples=400, seed_var=0.004**2, example_var=0.01, residual_var=0.1, per_seed=()
    )
    rng, family = np.random.default_rng(12), 2
    level = findings.ALPHA / family
    within_3pp = {"equivalent": {"a": A, "b": B, "margin_pp": 3.0}}
    in_band = 0
    for _ in range(200):
        d = gaussian_study(rng, truth, 4)
        se, df = independent_se(d), d.shape[1] - 1
        p = max(scipy_stats.t.sf((d.mean() + 0.03) / se, df), scipy_stats.t.cdf((d.mean() - 0.03) / se, df))
        in_band += level <= p < 2 * level
        verdict = decide(d, np.zeros_like(d), [within_3pp] * family).iloc[0]["verdict"]
        assert (verdict == "holds") == (p < level), p
    assert in_band >= 3  # the test saw studies where the two levels disagree


@pytest.mark.slow
@pytest.mark.parametrize(
    ("claim", "boundary_pp"),
    [(BETTER, 0.0), ({"at_least": {"a": A, "b": B, "by_pp": 1.0}}, 1.0), (EQUIVALENT, 2.0)],
    ids=["better", "at_least", "equivalent"],
)
def test_false_holds_under_a_null_at_the_boundary_stay_within_the_familys_level(claim, boundary_pp) -> None:
    """The true a - b on the claim's boundary (the null it must reject), three seeds, a family of three
    claims: holds at most alpha / 3 of the time, within the simulation's own error (three binomial sds)."""
    truth = stats.Crossed(
        mean=boundary_pp / 100,
        seeds=3,
        examples=400,
        seed_var=0.01**2,
        example_var=0.01,
        residual_var=0.1,
        per_seed=(),
    )
    rng, family, studies = np.random.default_rng(13), 3, 800
    holds = 0
    for _ in range(studies):
        d = gaussian_study(rng, truth, 3)
        holds += decide(d, np.zeros_like(d), [claim] * family).iloc[0]["verdict"] == "holds"
    nominal = findings.ALPHA / family
    assert holds / studies <= nominal + 3 * math.sqrt(nominal * (1 - nominal) / studies)


def test_the_planner_sizes_at_an_upper_bound_of_the_seed_variance_never_below_the_seeds_run() -> None:
    """Two degrees of freedom can show a seed variance of zero; the planner must not take that at its word."""
    d = np.tile(np.array([[0.02, 0.02, 0.02]]), (400, 1)) + np.random.default_rng(14).normal(0, 0.3, (400, 1))
    fit = stats.Crossed.fit(d)
    assert fit.seed_var == 0.0
    bound = fit.with_seed_var_bound(findings.PLANNING_BOUND)
    chi = scipy_stats.chi2.ppf(1 - findings.PLANNING_BOUND, 2)
    assert bound.seed_var + bound.residual_var / 400 == pytest.approx(2 * fit.residual_var / 400 / chi)
    result = decide(d, np.zeros_like(d), [BETTER] * 3).iloc[0]
    assert result["seeds_needed_400_examples"] is None or result["seeds_needed_400_examples"] >= 3


def two_looks(max_seeds: int = 6) -> plan_module.Plan:
    """A plan of looks at half and all of `max_seeds`, alpha 0.05, O'Brien-Fleming spending."""
    return plan_module.Plan(
        file="plan.yaml", sha256="0" * 64, claims="claims.yaml", version=1, alpha=0.05, max_seeds=max_seeds,
        looks=(max_seeds // 2, max_seeds), spending="obrien_fleming_union", smallest_effects_pp={},
        excluded={}, committed="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def decide_planned(d: np.ndarray, claim: dict, plan: plan_module.Plan) -> pd.Series:
    index = [f"e{i}" for i in range(len(d))]
    correct = {"a": pd.DataFrame(d, index=index), "b": pd.DataFrame(np.zeros_like(d), index=index)}
    table = pd.DataFrame(
        {"configuration": [A, B], "impl": ["ours", "ours"], "config_id": ["a", "b"], "n": [d.shape[1]] * 2,
         "collapsed_seeds": [(), ()]}
    )  # fmt: skip
    return findings.check([claims_module.parse(claim)], table, correct, plan, "2026-02-01").iloc[0]


def test_the_committed_full_scale_plan_is_found_hashed_and_spends_its_alpha_over_its_looks() -> None:
    plan = plan_module.load_plan(CONF_DIR.parent / "results" / "imdb_rank_target" / "full_minilm")
    assert plan is not None and plan.looks == (3, 6) and plan.max_seeds == 6
    path = CONF_DIR.parent / plan.file
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    levels = plan.levels(0.05 / 10)
    assert sum(levels) == pytest.approx(0.05 / 10) and levels[0] < levels[1] / 10  # little spent early


def test_a_planned_claim_is_read_at_its_looks_only_and_stops_at_the_first_decisive_one() -> None:
    rng, plan = np.random.default_rng(21), two_looks()
    truth = stats.Crossed(
        mean=0.20, seeds=6, examples=400, seed_var=0.005**2, example_var=0.01, residual_var=0.1, per_seed=()
    )
    d = gaussian_study(rng, truth, 6)
    first = decide_planned(d[:, :2], BETTER, plan)
    assert (
        first["verdict"] == "inconclusive"
        and first["to_decide"] == "first look at 3 seeds of both rows (2 now)"
    )
    at_look_1 = decide_planned(d[:, :4], BETTER, plan)
    assert at_look_1["verdict"] == "holds" and at_look_1["to_decide"] == "decided at look 1 of 2"
    assert at_look_1["seeds"] == 3 and at_look_1["looks"].count("look ") == 1
    assert at_look_1["p"] < at_look_1["p_adjusted"] < 0.05  # held: below alpha once adjusted for its look
    later = decide_planned(d, BETTER, plan)  # seeds 3-5 arrive after the claim stopped: nothing changes
    assert later["looks"] == at_look_1["looks"] and later["standing"] == "confirmatory"
    small = gaussian_study(rng, replace(truth, mean=0.0), 4)
    assert decide_planned(small, BETTER, plan)["to_decide"] == "next look at 6 seeds"


@pytest.mark.slow
def test_false_holds_over_both_looks_of_a_plan_stay_within_alpha() -> None:
    """The union bound: a null on the boundary, read at 3 and 6 seeds, holds at most alpha of the time."""
    truth = stats.Crossed(
        mean=0.0, seeds=6, examples=300, seed_var=0.01**2, example_var=0.01, residual_var=0.1, per_seed=()
    )
    rng, plan, studies = np.random.default_rng(22), two_looks(), 800
    holds = sum(
        decide_planned(gaussian_study(rng, truth, 6), BETTER, plan)["verdict"] == "holds"
        for _ in range(studies)
    )
    assert holds / studies <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / studies)


def test_a_plans_simulated_power_matches_the_noncentral_t_and_its_looks_cost_little() -> None:
    """One look: the simulation against the exact power of a one-sided t test (noncentral t, an independent
    formula). The looks: at no effect they hold at most the level, and they never have more power than one
    look at max_seeds (within the simulation's error)."""
    plan, a, sims = two_looks(), 0.005, 20_000
    for effect in (1.0, 2.0):
        p = plan.power(a, effect, sims)
        k = plan.max_seeds
        exact = scipy_stats.nct.sf(scipy_stats.t.ppf(1 - a, k - 1), k - 1, effect * math.sqrt(k))
        se = math.sqrt(exact * (1 - exact) / sims)
        assert abs(p["one_look"] - exact) < 4 * se
        assert p["looks"] <= p["one_look"] + 4 * se and 3 <= p["mean_seeds"] <= 6
    null = plan.power(a, 0.0, sims)
    assert null["looks"] <= a + 4 * math.sqrt(a / sims)
    assert plan.power(0.05, 4.0, 2000)["mean_seeds"] < 6  # a large effect stops some at the first look
