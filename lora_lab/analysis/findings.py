"""A study's claims, checked against its runs: experiments/<study>/claims.yaml -> findings.md / findings.csv.

Claims name rows of the table by label (and impl, default ours; head-only and full have none):
  - better: {a, b}                  a's accuracy is above b's
  - at_least: {a, b, by_pp}         a's accuracy is above b's by more than by_pp points
  - equivalent: {a, b, margin_pp}   |a - b| < margin_pp (two one-sided tests)
  - impls_equivalent: {margin_pp}   ours and PEFT equivalent on every LoRA row (one claim per row)
Each may give `reference_pp`, the reference's own difference, and `statement`, the words of the finding.

Verdicts: `holds` when the claim's one-sided test rejects its null after Holm's adjustment across the study's
claims (p < 0.05) and the 95% CI, which also resamples seeds, lies wholly on the claim's side (the test
resamples examples only, so seed-to-seed variation must not undo it); `contradicted` when the 95% CI lies
wholly on the wrong side of the claim's threshold (for equivalence: wholly outside the margin); `inconclusive`
otherwise, with roughly how many test examples (and seeds) the observed effect would need (power 0.8).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lora_lab.analysis import stats
from lora_lab.analysis.runs import NO_IMPL
from lora_lab.atomic import write_text_atomic
from lora_lab.config import EXPERIMENTS_DIR

ALPHA = 0.05
COLUMNS = [
    "claim",
    "kind",
    "a",
    "b",
    "threshold_pp",
    "reference_pp",
    "diff_pp",
    "ci_low",
    "ci_high",
    "p",
    "examples",
    "seed_pairs",
]
KINDS = ("better", "at_least", "equivalent", "impls_equivalent")


def load_claims(experiment: str, path: str | Path | None = None) -> list[dict] | None:
    """experiments/<study>/claims.yaml for an experiment named <study>/<variant>; None when there is none."""
    path = Path(path) if path else EXPERIMENTS_DIR / experiment.split("/")[0] / "claims.yaml"
    if not path.is_file():
        return None
    claims = OmegaConf.to_container(OmegaConf.load(path))["claims"]
    for claim in claims:
        kinds = [k for k in KINDS if k in claim]
        if len(kinds) != 1:
            raise ValueError(f"{path}: each claim needs exactly one of {KINDS}, got {sorted(claim)}")
    return claims


def check(claims: list[dict], table: pd.DataFrame, correct: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (expanded) claim: the difference, its CI, Holm-adjusted p and the verdict."""
    rows = []
    for claim in _expanded(claims, table):
        kind, args = next((k, claim[k]) for k in KINDS if k in claim)
        named = {"claim": _statement(claim, kind, args), "kind": kind, "a": args["a"], "b": args["b"]}
        named["reference_pp"] = claim.get("reference_pp")
        impl_a = args.get("impl", "ours")
        a, b = _config(table, args["a"], impl_a), _config(table, args["b"], args.get("impl_b", impl_a))
        if a not in correct or b not in correct:  # a sweep still under way, or records without predictions
            rows.append(named)
            continue
        diff = stats.difference(correct[a], correct[b])
        threshold = {"better": 0.0, "at_least": args.get("by_pp", 0.0)}.get(kind, args.get("margin_pp"))
        if kind == "equivalent":
            p = max(diff.p_greater(-threshold), diff.p_less(threshold))
            wrong_side = diff.low > threshold or diff.high < -threshold
            ci_agrees = -threshold < diff.low and diff.high < threshold
            margin = threshold - abs(diff.diff)
        else:
            p = diff.p_greater(threshold)
            wrong_side = diff.high < threshold
            ci_agrees = diff.low > threshold
            margin = diff.diff - threshold
        needed_examples, needed_seeds = diff.needed(margin)
        rows.append(
            {
                **named,
                "threshold_pp": threshold,
                "diff_pp": diff.diff,
                "ci_low": diff.low,
                "ci_high": diff.high,
                "p": p,
                "examples": diff.examples,
                "seed_pairs": diff.seed_pairs,
                "_wrong_side": wrong_side,
                "_ci_agrees": ci_agrees,
                "_needed": (needed_examples, needed_seeds),
            }
        )
    findings = pd.DataFrame(rows, columns=[*COLUMNS, "_wrong_side", "_ci_agrees", "_needed"])
    checked = findings["p"].notna()
    findings["p_holm"] = float("nan")
    if checked.any():
        findings.loc[checked, "p_holm"] = stats.holm(findings.loc[checked, "p"].tolist())
    findings["verdict"] = [
        "not run"
        if pd.isna(p)
        else "holds"
        if p < ALPHA and agrees
        else "contradicted"
        if wrong
        else "inconclusive"
        for p, agrees, wrong in zip(
            findings["p_holm"], findings["_ci_agrees"], findings["_wrong_side"], strict=True
        )
    ]
    findings["would_need"] = [
        "its rows have no runs with predictions here"
        if verdict == "not run"
        else _need_text(*needed)
        if verdict == "inconclusive"
        else ""
        for verdict, needed in zip(findings["verdict"], findings["_needed"], strict=True)
    ]
    return findings.drop(columns=["_wrong_side", "_ci_agrees", "_needed"])


def _expanded(claims: list[dict], table: pd.DataFrame) -> list[dict]:
    """impls_equivalent becomes one equivalent claim (ours vs PEFT) per LoRA row."""
    out = []
    for claim in claims:
        if "impls_equivalent" not in claim:
            out.append(claim)
            continue
        margin = claim["impls_equivalent"]["margin_pp"]
        for label in table.loc[table["impl"] == "ours", "configuration"]:
            if ((table["configuration"] == label) & (table["impl"] == "peft")).any():
                args = {"a": label, "b": label, "impl": "ours", "impl_b": "peft", "margin_pp": margin}
                out.append({"equivalent": args, "statement": f"{label}: ours = PEFT within {margin:g} pp"})
    return out


def _config(table: pd.DataFrame, label: str, impl: str) -> str | None:
    """The config_id of the row named `label` (of `impl`, or its impl-less row: head-only, full); None when
    the table has no such row."""
    rows = table[(table["configuration"] == label) & table["impl"].isin([impl, NO_IMPL])]
    if rows.empty:
        return None
    if len(rows) > 1:
        found = sorted(table["configuration"].unique())
        raise ValueError(
            f"a claim names the row {label!r} (impl {impl}), found {len(rows)} times; the rows: {found}"
        )
    return rows["config_id"].iloc[0]


def _statement(claim: dict, kind: str, args: dict) -> str:
    if "statement" in claim:
        return claim["statement"]
    words = {"better": "beats", "at_least": f"beats by > {args.get('by_pp')} pp", "equivalent": "="}[kind]
    return f"{args['a']} {words} {args['b']}"


def _need_text(examples: int | None, seeds: int | None) -> str:
    if examples is None:
        return "no sample size: the observed effect points the other way"
    text = f"≈{examples:,} test examples"
    return text + (f" or ≈{seeds} seeds" if seeds else "")


def to_markdown(findings: pd.DataFrame) -> str:
    lines = [
        "| Claim | Reference Δ (pp) | Ours Δ (pp) | 95% CI | p (Holm) | Verdict | Would need |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in findings.itertuples(index=False):
        ref = "" if r.reference_pp is None or pd.isna(r.reference_pp) else f"{r.reference_pp:+.2f}"
        ours = (
            ""
            if pd.isna(r.diff_pp)
            else f"{r.diff_pp:+.2f} | [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {_p(r.p_holm)}"
        )
        lines.append(f"| {r.claim} | {ref} | {ours or ' | | '} | {r.verdict} | {r.would_need} |")
    checked = findings.dropna(subset=["diff_pp"])
    if checked.empty:
        return "\n".join(lines) + "\n"
    first = checked.iloc[0]
    lines.append(
        f"\nΔ = a - b in accuracy points on the same {int(first['examples']):,} test examples. CI: paired "
        f"bootstrap over examples and seed pairs ({int(first['seed_pairs'])} here). p: one-sided paired "
        f"permutation test over examples of the claim's null, Holm-adjusted over {len(checked)} claims run."
    )
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def write_findings(findings: pd.DataFrame, out: str | Path) -> list[Path]:
    out = Path(out)
    return [
        write_text_atomic(out / "findings.md", to_markdown(findings)),
        write_text_atomic(out / "findings.csv", findings.to_csv(index=False, float_format="%.4f")),
    ]
