"""From run records to the paper's table, the study's findings and their plots.

python -m lora_lab.analysis results/imdb_rank_target/cpu_minilm
"""

from lora_lab.analysis.claims import load_claims
from lora_lab.analysis.findings import check
from lora_lab.analysis.plot import plot, plot_findings
from lora_lab.analysis.runs import correctness, load_runs, load_wandb_runs
from lora_lab.analysis.table import load_reference, summarize, write_tables

__all__ = [
    "check",
    "correctness",
    "load_claims",
    "load_reference",
    "load_runs",
    "load_wandb_runs",
    "plot",
    "plot_findings",
    "summarize",
    "write_tables",
]
