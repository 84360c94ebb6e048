"""From run records to the paper's table and the accuracy-vs-trainable-parameters plot.

python -m lora_lab.analysis results/imdb_rank_target/cpu_minilm
"""

from lora_lab.analysis.plot import plot
from lora_lab.analysis.runs import load_runs, load_wandb_runs
from lora_lab.analysis.table import load_reference, summarize, write_tables

__all__ = ["load_reference", "load_runs", "load_wandb_runs", "plot", "summarize", "write_tables"]
