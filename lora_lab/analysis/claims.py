"""What a study claims, as data: experiments/<study>/claims.yaml, one kind a class, as methods are.

Claims name rows of the table by label (and impl, default ours; head-only and full have none):
  - better: {a, b}                  a's accuracy is above b's
  - at_least: {a, b, by_pp}         a's accuracy is above b's by more than by_pp points
  - equivalent: {a, b, margin_pp}   |a - b| < margin_pp
  - impls_equivalent: {margin_pp}   ours and PEFT equivalent on every row that has both (one claim per row)
Each may give `reference_pp`, the reference's own difference, and `statement`, the words of the finding. A
kind declares its YAML key and arguments; parse() checks a file against those declarations alone. How a claim
is decided: findings.py.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from lora_lab.analysis import stats
from lora_lab.config import EXPERIMENTS_DIR, is_number

Check = Callable[[object], str | None]  # an argument's checker: what it wants, or None when the value is fine


def _label(value: object) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a row label (a string) of the study's table"


def _impl(value: object) -> str | None:
    return None if value in ("ours", "peft") else "ours or peft"


def _points(low: float, strict: bool) -> Check:
    def check(value: object) -> str | None:
        if is_number(value) and isinstance(value, (int, float)) and math.isfinite(value):
            if value > low or (value == low and not strict):
                return None
        return f"a number of accuracy points {'>' if strict else '>='} {low:g}"

    return check


ROWS: dict[str, Check] = {
    "a": _label,
    "b": _label,
    "impl": _impl,
    "impl_b": _impl,
}  # a claim's two rows; impl default ours


class Claim:
    """Two rows, a threshold, and which side of it the claim says a - b lies on. A kind is one subclass that
    declares its YAML key and its arguments (name: checker returning what is wanted, or None when fine)."""

    key = ""  # the claim's key in claims.yaml
    args: dict[str, Check] = {}  # its arguments
    required: tuple[str, ...] = ()
    two_sided = False  # the threshold bounds a - b on both sides (an equivalence margin)

    def __init__(self, args: dict, statement: str | None = None, reference_pp: float | None = None) -> None:
        self.a, self.b = args["a"], args["b"]
        self.impl_a = args.get("impl", "ours")
        self.impl_b = args.get("impl_b", self.impl_a)
        self.statement = statement or self.default_statement()
        self.reference_pp = reference_pp

    def default_statement(self) -> str:
        raise NotImplementedError

    def expand(self, table: pd.DataFrame) -> list[Claim]:
        """The claims to check: itself, or several (impls_equivalent: one per row)."""
        return [self]

    @property
    def threshold_pp(self) -> float:
        raise NotImplementedError

    def p(self, diff: stats.Crossed) -> float:
        """One-sided p-value of the claim's null."""
        raise NotImplementedError

    def verdict(self, low_pp: float, high_pp: float) -> str:
        """From the deciding interval of a - b."""
        raise NotImplementedError

    def margin(self, diff_pp: float) -> float:
        """How far an observed a - b lies on the claim's side of its boundary (pp; negative: the other)."""
        raise NotImplementedError

    def power(self, diff: stats.Crossed, alpha: float, seeds: int, examples: float) -> float:
        """Chance of `holds` in a study of `seeds` x `examples` if the true a - b were the observed one."""
        raise NotImplementedError


class Beats(Claim):
    """better: a - b > 0."""

    key = "better"
    args = ROWS
    required: tuple[str, ...] = ("a", "b")

    def __init__(self, args: dict, **kw) -> None:
        self.by_pp = float(args.get("by_pp", 0.0))
        super().__init__(args, **kw)

    def default_statement(self) -> str:
        return f"{self.a} beats {self.b}" + (f" by > {self.by_pp:g} pp" if self.by_pp else "")

    @property
    def threshold_pp(self) -> float:
        return self.by_pp

    def p(self, diff: stats.Crossed) -> float:
        return diff.p_above(self.by_pp / 100)

    def verdict(self, low_pp: float, high_pp: float) -> str:
        return "holds" if low_pp > self.by_pp else "contradicted" if high_pp < self.by_pp else "inconclusive"

    def margin(self, diff_pp: float) -> float:
        return diff_pp - self.by_pp

    def power(self, diff: stats.Crossed, alpha: float, seeds: int, examples: float) -> float:
        return diff.power_one_sided(self.margin(100 * diff.mean) / 100, alpha, seeds, examples)


class AtLeast(Beats):
    """at_least: a - b > by_pp."""

    key = "at_least"
    args = {**ROWS, "by_pp": _points(0, strict=False)}
    required: tuple[str, ...] = ("a", "b", "by_pp")


class Equivalent(Claim):
    """|a - b| < margin_pp, by two one-sided tests (TOST)."""

    key = "equivalent"
    args = {**ROWS, "margin_pp": _points(0, strict=True)}
    required: tuple[str, ...] = ("a", "b", "margin_pp")
    two_sided = True

    def __init__(self, args: dict, **kw) -> None:
        self.margin_pp = float(args["margin_pp"])
        super().__init__(args, **kw)

    def default_statement(self) -> str:
        return f"{self.a} = {self.b} within {self.margin_pp:g} pp"

    @property
    def threshold_pp(self) -> float:
        return self.margin_pp

    def p(self, diff: stats.Crossed) -> float:
        m = self.margin_pp / 100
        return max(diff.p_above(-m), diff.p_below(m))

    def verdict(self, low_pp: float, high_pp: float) -> str:
        m = self.margin_pp
        if -m < low_pp and high_pp < m:
            return "holds"
        return "contradicted" if low_pp > m or high_pp < -m else "inconclusive"

    def margin(self, diff_pp: float) -> float:
        return self.margin_pp - abs(diff_pp)

    def power(self, diff: stats.Crossed, alpha: float, seeds: int, examples: float) -> float:
        m = self.margin_pp / 100  # both one-sided tests must pass: P(A and B) >= P(A) + P(B) - 1
        sides = [diff.power_one_sided(m + s * diff.mean, alpha, seeds, examples) for s in (1, -1)]
        return max(0.0, sum(sides) - 1)


class ImplsEquivalent(Equivalent):
    """Ours = PEFT within margin_pp, on every row of the table that has both."""

    key = "impls_equivalent"
    args = {"margin_pp": _points(0, strict=True)}
    required: tuple[str, ...] = ("margin_pp",)

    def __init__(self, args: dict, **kw) -> None:
        super().__init__({"a": None, "b": None, **args}, **kw)

    def default_statement(self) -> str:
        return f"ours = PEFT within {self.margin_pp:g} pp"

    def expand(self, table: pd.DataFrame) -> list[Claim]:
        labels = table.loc[table["impl"] == "ours", "configuration"]
        both = [
            label for label in labels if ((table["configuration"] == label) & (table["impl"] == "peft")).any()
        ]
        return [
            Equivalent(
                {"a": label, "b": label, "impl": "ours", "impl_b": "peft", "margin_pp": self.margin_pp},
                statement=f"{label}: ours = PEFT within {self.margin_pp:g} pp",
            )
            for label in both
        ]


KINDS: dict[str, type[Claim]] = {kind.key: kind for kind in (Beats, AtLeast, Equivalent, ImplsEquivalent)}
CLAIM_KEYS = {
    "statement": lambda v: None if isinstance(v, str) else "a string",
    "reference_pp": _points(-100, False),
}


def load_claims(experiment: str, path: str | Path | None = None) -> list[Claim] | None:
    """The claims of experiments/<study>/claims.yaml for an experiment named <study>/<variant> (None when the
    study has none), or of `path`, which must exist."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"--claims {path}: no such file; give a claims YAML file, or leave it out")
    path = Path(path) if path else EXPERIMENTS_DIR / experiment.split("/")[0] / "claims.yaml"
    if not path.is_file():
        return None
    try:
        specs = OmegaConf.to_container(OmegaConf.load(path))["claims"]
        assert isinstance(specs, list), "`claims:` must be a list"
    except Exception as err:  # YAML syntax, or no `claims:` list: say which file
        raise ValueError(
            f"{path} is not a claims file ({type(err).__name__}: {err}); see {__name__}"
        ) from None
    return [parse(spec, f"{path}, claim {i + 1}") for i, spec in enumerate(specs)]


def parse(spec: dict, where: str = "claim") -> Claim:
    """One claim of a claims file, checked as the runner checks the command line: unknown keys refused with
    the closest known one, every argument's type and range, and no row compared with itself."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: {spec!r} is not a claim; each is a mapping such as {{better: {{a, b}}}}")
    where = f"{where} ({spec['statement']!r})" if isinstance(spec.get("statement"), str) else where
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        found = sorted(map(str, spec))
        raise ValueError(f"{where}: each claim needs exactly one of {', '.join(KINDS)}; found {found}")
    kind = KINDS[kinds[0]]
    _known(spec, {kind.key, *CLAIM_KEYS}, where)
    for key, check_value in CLAIM_KEYS.items():
        _valid(spec, key, check_value, where)
    args = spec[kind.key]
    if not isinstance(args, dict):
        raise ValueError(f"{where}: {kind.key} takes a mapping of {', '.join(kind.args)}, not {args!r}")
    _known(args, set(kind.args), f"{where}: {kind.key}")
    missing = [k for k in kind.required if k not in args]
    if missing:
        raise ValueError(f"{where}: {kind.key} lacks {', '.join(missing)} (it takes {', '.join(kind.args)})")
    for key, check_value in kind.args.items():
        _valid(args, key, check_value, f"{where}: {kind.key}")
    sides = [
        (args.get(k), args.get(i, args.get("impl", "ours"))) for k, i in (("a", "impl"), ("b", "impl_b"))
    ]
    if "a" in kind.args and sides[0] == sides[1]:
        raise ValueError(f"{where}: {kind.key} compares {args['a']!r} with itself; name two different rows")
    return kind(args, statement=spec.get("statement"), reference_pp=spec.get("reference_pp"))


def _known(mapping: dict, known: set[str], where: str) -> None:
    """Refuse a key outside `known`, naming the closest key (one it begins, first), and the claim kind that
    takes it when this one does not (`by` in a `better` claim: by_pp, of at_least)."""
    every = sorted(known | {name for kind in KINDS.values() for name in kind.args})
    for key in map(str, mapping):
        if key in known:
            continue
        close = [k for k in every if k.startswith(key)] or difflib.get_close_matches(key, every, n=1)
        if not close:
            raise ValueError(f"{where}: unknown key {key!r}; it takes {', '.join(sorted(known))}")
        kinds = [kind.key for kind in KINDS.values() if close[0] in kind.args and close[0] not in known]
        owner = f" (of an {' or '.join(kinds)} claim)" if kinds else ""
        raise ValueError(f"{where}: unknown key {key!r}; did you mean {close[0]}{owner}?")


def _valid(mapping: dict, key: str, check_value, where: str) -> None:
    if key in mapping and (wanted := check_value(mapping[key])):
        raise ValueError(f"{where}: {key}={mapping[key]!r} is not allowed; use {wanted}")
