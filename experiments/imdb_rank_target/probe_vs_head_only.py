"""Is the linear probe (method=head_only_cached) a stand-in for the head-only row? Two claims, checked by the
findings engine outside the study's claims.yaml (the study's other variants have no probe row): a family of
two, corrected for each other but not for the study's own claims.

python experiments/imdb_rank_target/probe_vs_head_only.py results/imdb_rank_target/cpu_minilm \
    > results/imdb_rank_target/cpu_minilm/probe_vs_head_only.txt
"""

import sys

from lora_lab.analysis import check, correctness, load_runs, summarize
from lora_lab.analysis.claims import parse

runs = load_runs(sys.argv[1])
correct = correctness(runs)
probe, live = "Classification Head Only (cached features)", "Classification Head Only"
claims = [
    parse({"equivalent": {"a": probe, "b": live, "margin_pp": 1.0}}),
    parse({"better": {"a": probe, "b": live}}),
]
result = check(claims, summarize(runs, correct), correct)
columns = ["claim", "seeds", "examples", "diff_pp", "ci_level", "ci_low", "ci_high", "p_adjusted", "verdict"]
print(result[columns + ["per_seed_pp"]].to_string(index=False))
