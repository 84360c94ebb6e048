"""A study's claims, checked against its runs: experiments/<study>/claims.yaml -> findings.md / findings.csv
(the claim kinds and how a claims file is read: claims.py).

What decides: the training seed is the unit of replication. A claim pairs the seeds both rows ran, and the
difference a - b gets the crossed (seeds x test examples) model of `stats`: seed-to-seed variance and test-set
sampling together, on the seeds' k - 1 degrees of freedom. Over a study's K claims the level is
Bonferroni's, 0.05/K a side, rather than Holm's, so that each claim's interval is exactly its test: the claim
`holds` when its (1 - 0.1/K) interval lies wholly on its side of the threshold (inside the margin, for
equivalence: TOST), is `contradicted` when it lies wholly on the other side, and is otherwise
`inconclusive`, with the seeds a study would need for power 0.8 under the same test. A claim needs two seeds
of both rows; with one there is no seed variance to weigh, and it stays inconclusive.

Runs that collapsed (store.collapse) stay in: each claim they touch is shown again without them, marked, and
outside the K; each row's collapse rate is reported as a finding of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lora_lab.analysis import stats
from lora_lab.analysis.claims import Claim
from lora_lab.analysis.plan import Plan
from lora_lab.analysis.runs import NO_IMPL
from lora_lab.atomic import write_text_atomic

ALPHA = 0.05  # family-wise, per side
PLANNING_BOUND = 0.8  # the planner sizes at the upper 80% confidence bound of the seed variance
FULL_TEST_SET = 25_000  # IMDB's test split: the most test examples a plan can ask for
WITHOUT_COLLAPSED = "without collapsed runs"
COLUMNS = [  # findings.csv's, in this order (the planner's seeds at more test sizes follow)
    *("claim", "variant", "kind", "a", "impl_a", "b", "impl_b", "threshold_pp", "two_sided", "reference_pp"),
    *("collapsed_runs", "claims_in_family", "ci_level", "seeds", "examples", "diff_pp", "ci_low", "ci_high"),
    *("df", "p", "p_adjusted", "seed_sd_pp", "per_seed_pp", "leave_one_out", "verdict", "to_decide"),
]


def check(
    claims: list[Claim],
    table: pd.DataFrame,
    correct: dict[str, pd.DataFrame],
    plan: Plan | None = None,
    first_run: str | None = None,
) -> pd.DataFrame:
    """One row per checked claim (and per claim re-checked without collapsed runs), with the verdict, the
    deciding interval, the per-seed differences and the seeds a study would need. With a `plan`, each claim is
    read at the plan's looks only, at the level each look spends, and stops at its first decisive look; the
    claims the plan names are confirmatory when it was committed before the first run (`first_run`)."""
    expanded = [c for claim in claims for c in claim.expand(table)]
    collapsed = dict(zip(table["config_id"], table["collapsed_seeds"], strict=True))
    cases = []  # (claim, variant, difference matrix or None, why not, collapsed runs)
    for claim in expanded:
        a, b = _config(table, claim.a, claim.impl_a), _config(table, claim.b, claim.impl_b)
        if a not in correct or b not in correct:
            cases.append((claim, "", None, "its runs kept no predictions", ""))
            continue
        seeds = sorted(set(correct[a].columns) & set(correct[b].columns))
        hit = {s: rows for s in seeds if (rows := [r for r in (a, b) if s in collapsed.get(r, ())])}
        shown = "; ".join(
            f"seed {s}: {' and '.join(_row(table, r) for r in rows)}" for s, rows in hit.items()
        )
        cases.append((claim, "", _paired(correct[a], correct[b], seeds), None, shown))
        if hit:
            kept = [s for s in seeds if s not in hit]
            cases.append((claim, WITHOUT_COLLAPSED, _paired(correct[a], correct[b], kept), None, ""))
    family = sum(1 for _, variant, d, _, _ in cases if not variant and d is not None and d.shape[1] >= 2)
    level = 1 - 2 * ALPHA / max(family, 1)
    rows = [_row_of(claim, variant, d, why, shown, family, level) for claim, variant, d, why, shown in cases]
    if plan is not None:
        before = plan.committed is not None and (first_run is None or plan.committed < first_run)
        for row, (claim, variant, d, _, _) in zip(rows, cases, strict=True):
            planned = before and claim.statement not in plan.excluded and not variant
            row |= {"plan": plan.sha256[:12], "standing": "confirmatory" if planned else "exploratory"}
            if d is not None and not variant and d.shape[1] >= 2:
                row |= _sequential(claim, d, plan, family)
                effect = plan.smallest_effects_pp.get(claim.statement)
                if row["verdict"] == "inconclusive" and effect is not None:
                    sized = _plan(claim, stats.Crossed.fit(d.to_numpy()), family, effect)
                    row |= {
                        **sized,
                        "to_decide": f"{row['to_decide']}; at its smallest effect, {effect:g} pp: "
                        f"{sized['to_decide']}",
                    }
    grid = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))  # the planner's columns
    return pd.DataFrame(rows).reindex(columns=COLUMNS + grid)


def _paired(a: pd.DataFrame, b: pd.DataFrame, seeds: list) -> pd.DataFrame:
    """a - b in correctness, per test example and shared seed."""
    if not a.index.equals(b.index):  # equal in order (the usual case): nothing to align
        if set(a.index) != set(b.index):
            raise ValueError(
                "two rows of a claim were scored on different test examples; they cannot be paired"
            )
        b = b.loc[a.index]
    # through numpy: simulations call this thousands of times, and pandas' aligned arithmetic dominated them
    a_seeds, b_seeds = (m.to_numpy()[:, m.columns.get_indexer(seeds)] for m in (a, b))
    return pd.DataFrame(a_seeds - b_seeds, index=a.index, columns=seeds)


def _row_of(
    claim: Claim, variant: str, d: pd.DataFrame | None, why: str | None, shown: str, family: int, level: float
) -> dict:
    row = {
        "claim": claim.statement,
        "variant": variant,
        "kind": type(claim).__name__,
        "a": claim.a,
        "impl_a": claim.impl_a,
        "b": claim.b,
        "impl_b": claim.impl_b,
        "threshold_pp": claim.threshold_pp,
        "two_sided": claim.two_sided,
        "reference_pp": claim.reference_pp,
        "collapsed_runs": shown,
        "claims_in_family": family,
        "ci_level": level,
    }
    if d is None:
        return {**row, "seeds": 0, "verdict": "not checked", "to_decide": why}
    seeds = d.shape[1]
    if seeds < 2:
        return {
            **row,
            "seeds": seeds,
            "examples": len(d),
            "diff_pp": 100 * float(d.to_numpy().mean()) if seeds else math.nan,
            "verdict": "inconclusive",
            "to_decide": f"{seeds} seed(s) of both rows: run at least 2 (1 seed shows test-set noise only)",
        }
    diff = stats.Crossed.fit(d.to_numpy())
    se, df = diff.se_df()
    low, high = (min(max(100 * v, -100.0), 100.0) for v in diff.interval(level))  # where a - b can lie
    verdict = claim.verdict(low, high)
    per_seed = 100 * np.array(diff.per_seed)
    row |= {
        "seeds": seeds,
        "examples": diff.examples,
        "diff_pp": 100 * diff.mean,
        "ci_low": low,
        "ci_high": high,
        "df": df,
        "p": claim.p(diff),
        "p_adjusted": min(1.0, family * claim.p(diff)),
        "seed_sd_pp": 100 * math.sqrt(diff.seed_var),
        "per_seed_pp": "; ".join(f"{s}: {v:+.2f}" for s, v in zip(d.columns, per_seed, strict=True)),
        "leave_one_out": _leave_one_out(claim, d, level, verdict),
        "verdict": verdict,
    }
    plan = _plan(claim, diff, family) if verdict == "inconclusive" and not variant else {}
    return row | plan


def _sequential(claim: Claim, d: pd.DataFrame, plan: Plan, family: int) -> dict:
    """The claim read at each of the plan's looks its seeds reach (the first `look` seeds in seed order), each
    at the level that look spends of alpha / family; it stops at its first decisive look. The columns it sets
    replace the all-seeds reading: what is shown is what decided."""
    levels, ledger = plan.levels(plan.alpha / family), []
    for number, (seeds, level) in enumerate(zip(plan.looks, levels, strict=True), start=1):
        if d.shape[1] < seeds:
            break
        fit = stats.Crossed.fit(d[sorted(d.columns)[:seeds]].to_numpy())
        low, high = (min(max(100 * v, -100.0), 100.0) for v in fit.interval(1 - 2 * level))
        verdict = claim.verdict(low, high)
        ledger.append((number, seeds, 100 * fit.mean, low, high, level, verdict, claim.p(fit)))
        if verdict != "inconclusive":
            break
    if not ledger:
        wait = f"first look at {plan.looks[0]} seeds of both rows ({d.shape[1]} now)"
        return {"verdict": "inconclusive", "to_decide": wait, "looks": "", "ci_low": None, "ci_high": None}
    number, seeds, diff, low, high, level, verdict, p = ledger[-1]
    if verdict != "inconclusive":
        status = f"decided at look {number} of {len(plan.looks)}"
    elif seeds == plan.max_seeds:
        status = f"inconclusive at the plan's maximum, {plan.max_seeds} seeds"
    else:
        status = f"next look at {plan.looks[number]} seeds"
    return {
        "seeds": seeds,
        "diff_pp": diff,
        "ci_low": low,
        "ci_high": high,
        "ci_level": 1 - 2 * level,
        "df": seeds - 1,
        "p": p,
        "p_adjusted": min(1.0, p * plan.alpha / level),  # below alpha exactly when this look decides
        "verdict": verdict,
        "to_decide": status,
        "looks": "; ".join(
            f"look {n} ({k} seeds): {x:+.2f} [{lo:+.2f}, {hi:+.2f}] at one-sided {a:.2g}, {v}"
            for n, k, x, lo, hi, a, v, _ in ledger
        ),
    }


def _leave_one_out(claim: Claim, d: pd.DataFrame, level: float, verdict: str) -> str:
    """The verdict with each seed left out in turn, at the same level: how many agree with `verdict`, and the
    seeds whose absence changes it (a claim that holds only with one seed in rests on that seed)."""
    if d.shape[1] < 3:
        return "needs 3 seeds"
    changed, matrix = [], d.to_numpy()
    for i, seed in enumerate(d.columns):
        low, high = (100 * v for v in stats.Crossed.fit(np.delete(matrix, i, axis=1)).interval(level))
        if claim.verdict(low, high) != verdict:
            changed.append(f"{seed}: {claim.verdict(low, high)}")
    agree = f"{d.shape[1] - len(changed)} of {d.shape[1]} {verdict}"
    return agree + (f"; without seed {', '.join(changed)}" if changed else "")


def _plan(claim: Claim, diff: stats.Crossed, family: int, effect_pp: float | None = None) -> dict:
    """Seeds needed for power 0.8 at the study's test size and a few larger ones, under the same test, if the
    true difference were the observed one (or `effect_pp` beyond the claim's threshold; 0 for equivalence)
    and the seed variance at its upper 80% bound (never fewer seeds than the study has)."""
    sizes = sorted({diff.examples, max(diff.examples, FULL_TEST_SET)}) + [math.inf]
    if effect_pp is not None:
        diff = replace(diff, mean=0.0 if claim.two_sided else (claim.threshold_pp + effect_pp) / 100)
    if claim.margin(100 * diff.mean) <= 0:
        text = "the observed difference lies on the claim's wrong side: no study size makes it hold"
        return {"to_decide": text, **{_grid_column(n): None for n in sizes}}
    bound = diff.with_seed_var_bound(PLANNING_BOUND)
    needed = {
        n: stats.seeds_needed(lambda k, n=n: claim.power(bound, ALPHA / family, k, n), diff.seeds)
        for n in sizes
    }
    text = ", ".join(
        f"≈{k:,} seeds " + ("with unlimited test examples" if math.isinf(n) else f"at {n:,} test examples")
        if k
        else f"more than {stats.MAX_SEEDS:,} seeds at {n:,} test examples"
        for n, k in needed.items()
        if not math.isinf(n) or k
    )
    if needed[math.inf] is None or needed[math.inf] > diff.seeds:
        text += ": more test examples cannot settle this"
    return {"to_decide": text, **{_grid_column(n): needed[n] for n in sizes}}


def _grid_column(examples: float) -> str:
    return "seeds_needed_unlimited_examples" if math.isinf(examples) else f"seeds_needed_{examples}_examples"


def _config(table: pd.DataFrame, label: str, impl: str) -> str:
    """The config_id of the row named `label` (of `impl`, or its impl-less row: head-only, full)."""
    rows = list(zip(table["configuration"], table["impl"], table["config_id"], strict=True))
    ids = [cid for c, i, cid in rows if c == label and i in (impl, NO_IMPL)]
    if len(ids) != 1:
        found = "; ".join(f"{c} ({i})" for c, i, _ in rows)
        problem = "names no row of the study" if not ids else f"matches {len(ids)} rows"
        raise ValueError(
            f"a claim's row {label!r} (impl {impl}) {problem}: fix the label in the claims file; the rows: "
            f"{found} (a row whose runs have not landed yet: analyse with --claims none until they do)"
        )
    return ids[0]


def _row(table: pd.DataFrame, config_id: str) -> str:
    row = table.loc[table["config_id"] == config_id].iloc[0]
    return row["configuration"] + ("" if row["impl"] == NO_IMPL else f" ({row['impl']})")


def stability(table: pd.DataFrame) -> pd.DataFrame:
    """Each row's share of collapsed runs with a 95% Clopper-Pearson interval: how often the method fails."""
    rows = []
    for r in table.itertuples(index=False):
        hit = len(r.collapsed_seeds)
        ci = scipy_stats.binomtest(hit, r.n).proportion_ci(0.95)
        rows.append(
            {
                "configuration": r.configuration,
                "impl": r.impl,
                "collapsed": hit,
                "runs": r.n,
                "rate_low": 100 * ci.low,
                "rate_high": 100 * ci.high,
                "seeds": ", ".join(str(s) for s in r.collapsed_seeds),
            }
        )
    return pd.DataFrame(rows)


def _ledger(findings: pd.DataFrame, plan: Plan) -> list[str]:
    """The plan the verdicts follow, and each claim's looks so far: the ledger."""
    looks = ", ".join(map(str, plan.looks))
    lines = [
        "\n### The plan and its looks\n",
        f"Plan `{plan.file}` (version {plan.version}, sha256 {plan.sha256[:12]}, first committed "
        f"{plan.committed or 'outside git'}): looks at {looks} seeds per row, at most {plan.max_seeds}; "
        f"alpha {plan.alpha:g} over the claims (Bonferroni), each claim's share spent over the looks by "
        f"`{plan.spending}` (`lora_lab/analysis/plan.py`); a claim stops at its first decisive look. "
        "Confirmatory: a claim of the plan, committed before the study's first run; exploratory: the rest.\n",
        "| Claim | Standing | Looks (Δ pp, interval, one-sided level, verdict) |",
        "|---|---|---|",
    ]
    for r in findings[findings["variant"] == ""].to_dict("records"):
        lines.append(f"| {r['claim']} | {r.get('standing', '')} | {_text(r.get('looks')) or 'none yet'} |")
    return lines


def to_markdown(findings: pd.DataFrame, table: pd.DataFrame, plan: Plan | None = None) -> str:
    """The findings table, how it was decided, the plan's ledger when there is one, and the rows that
    collapsed."""
    checked = findings.dropna(subset=["diff_pp"]) if "diff_pp" in findings else findings.iloc[:0]
    level = 100 * findings["ci_level"].iloc[0] if len(findings) else 95.0
    lines = [
        f"| Claim | Reference Δ (pp) | Ours Δ (pp) | {level:.2f}% CI (decides) | p (Bonferroni) | Verdict "
        "| Per-seed Δ (pp) | Leave one seed out | To decide |",
        "|---|---:|---:|---|---:|---|---|---|---|",
    ]
    for r in findings.to_dict("records"):
        name = f"↳ {WITHOUT_COLLAPSED} (sensitivity, not in the family)" if r["variant"] else r["claim"]
        if r.get("collapsed_runs"):
            name += f" — collapsed: {r['collapsed_runs']}"
        ref = "" if _missing(r["reference_pp"]) else f"{r['reference_pp']:+.2f}"
        diff = "" if _missing(r.get("diff_pp")) else f"{r['diff_pp']:+.2f}"
        ci = "" if _missing(r.get("ci_low")) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        p = "" if _missing(r.get("p_adjusted")) else _p(r["p_adjusted"])
        cells = [name, ref, diff, ci, p, r["verdict"], _text(r.get("per_seed_pp"))]
        cells += [_text(r.get("leave_one_out")), _text(r.get("to_decide"))]
        lines.append("| " + " | ".join(cells) + " |")
    if not checked.empty:
        first = checked.iloc[0]
        family = int(first["claims_in_family"])
        lines.append(
            "\nΔ = a - b in accuracy points, over the seeds both rows ran, on the same "
            f"{int(first['examples']):,} test examples. The unit of replication is the training seed: the CI "
            "and p come from a crossed (seeds x test examples) model that counts seed-to-seed and test-set "
            "variance together, on the seeds' k - 1 degrees of freedom, at Bonferroni's level over the "
            f"{family} claims checked ({ALPHA:g}/{family} a side: the {level:.2f}% interval, TOST for "
            "equivalence). A claim holds when that interval lies wholly on its side of the threshold, and is "
            "contradicted when it lies wholly on the other side. Leave one seed out: the verdict with each "
            "seed left out in turn. To decide: seeds for power 0.8 under that same test, if the true "
            "difference were the one observed and the seed variance at its upper 80% bound (findings.csv has "
            "them at more test examples too)."
        )
    if plan is not None:
        lines += _ledger(findings, plan)
    unstable = stability(table)
    unstable = unstable[unstable["collapsed"] > 0]
    lines.append("\n### Stability: runs that collapsed (one class, or accuracy at chance)\n")
    if unstable.empty:
        lines.append(f"None of the {int(table['n'].sum())} runs collapsed.")
    else:
        lines += ["| Row | Impl | Collapsed | Rate, 95% CI | Seeds |", "|---|---|---:|---|---|"]
        for r in unstable.itertuples(index=False):
            lines.append(
                f"| {r.configuration} | {r.impl} | {r.collapsed} of {r.runs} | "
                f"[{r.rate_low:.0f}%, {r.rate_high:.0f}%] | {r.seeds} |"
            )
        rest = int(table["n"].sum() - unstable["runs"].sum())
        lines.append(f"\nNo run of the other rows collapsed ({rest} runs).")
    return "\n".join(lines) + "\n"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: object) -> str:
    return "" if _missing(value) else str(value)


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def write_findings(
    findings: pd.DataFrame,
    table: pd.DataFrame,
    out: str | Path,
    notes: Sequence[str] = (),
    plan: Plan | None = None,
) -> list[Path]:
    out = Path(out)
    return [
        write_text_atomic(
            out / "findings.md", to_markdown(findings, table, plan) + "".join(f"\n{n}\n" for n in notes)
        ),
        write_text_atomic(out / "findings.csv", findings.to_csv(index=False, float_format="%.4f")),
    ]
