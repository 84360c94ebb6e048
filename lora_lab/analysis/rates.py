"""Each row's learning rate, chosen on reviews held out of the train split (`data.eval_split=dev`), never on
the test split: the best dev accuracy among a pilot's rates that keep a grid step away from a collapse, per
row and impl -> rates.md.

python -m lora_lab.run -m experiment=imdb_methods_lr
python -m lora_lab.analysis results/imdb_methods/lr_pilot
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lora_lab.atomic import write_text_atomic


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """The pilot's table (one row per rate and row) with `chosen` marking each row's best rate at least one
    grid step below the lowest rate where a run collapsed (`passed`: the rate that margin passes over), `edge`
    where the choice is the grid's lowest or highest rate (the grid should then be widened), and `only`
    where a row has run one rate (nothing chosen yet).

    The margin is there because one pilot seed at a rate next to a collapse says little about the next
    seed: in imdb_methods, LoRA at 3e-3 and DoRA at 1e-3, each chosen one step below a pilot collapse,
    collapsed in 3 and 1 of 5 study seeds."""
    out = []
    for _, group in table.groupby(["label", "impl"], sort=False):
        group = group.sort_values("lr")
        collapsed = [len(seeds) > 0 for seeds in group["collapsed_seeds"]]
        first = collapsed.index(True) if True in collapsed else len(group)
        safe = group.iloc[: max(first - 1, 0)] if first < len(group) else group
        best = safe["accuracy"].idxmax() if len(safe) else None
        edge = len(group) > 1 and best in (group.index[0], group.index[-1])
        passed = group.index[first - 1] if len(safe) < first else None
        out.append(
            group.assign(
                chosen=group.index == best,
                passed=group.index == passed,
                collapsed=collapsed,
                edge=edge,
                only=len(group) == 1,
            )
        )
    return pd.concat(out)


def to_markdown(rates: pd.DataFrame) -> str:
    lines = [
        "| Row | Impl | lr | Dev accuracy | 95% CI | n | |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rates.itertuples(index=False):
        mark = ("**chosen**" + (": at the grid's edge, widen it" if r.edge else "")) if r.chosen else ""
        mark = "one rate run so far: no choice yet" if r.chosen and r.only else mark
        mark = "passed over: the next rate up collapsed" if r.passed else mark
        mark = f"collapsed ({len(r.collapsed_seeds)} of {r.n})" if r.collapsed else mark
        ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
        lines.append(f"| {r.label} | {r.impl} | {r.lr:g} | {r.accuracy:.2f}% | {ci} | {r.n} | {mark} |")
    lines.append(
        "\nAccuracy on reviews held out of the train split, one row per rate. The chosen rate has the best "
        "of each row among those at least one grid step below the lowest rate that collapsed (one class, "
        "or chance): a rate next to a collapse is passed over. Rates whose intervals overlap the chosen "
        "one's are not told apart by this pilot."
    )
    return "\n".join(lines) + "\n"


def write_rates(rates: pd.DataFrame, out: str | Path, notes: Sequence[str] = ()) -> Path:
    return write_text_atomic(Path(out) / "rates.md", to_markdown(rates) + "".join(f"\n{n}\n" for n in notes))
