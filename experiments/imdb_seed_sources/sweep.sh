#!/usr/bin/env bash
# The 32 runs of conf/experiment/imdb_seed_sources.yaml, value by value (0, then 1 for each source, ...), so
# that a study stopped part way has every source at a few values; rerun it and the store skips what is done.
#   LORA_LAB_ASSETS=../shared experiments/imdb_seed_sources/sweep.sh [results_dir=...]
set -euo pipefail
for value in 0 1 2 3 4 5; do
  for source in init data_order dropout; do
    python -m lora_lab.run -m experiment=imdb_seed_sources "${source}_seed=${value}" \
      hydra/launcher=local_parallel hydra.launcher.n_jobs=2 trainer.num_threads=1 trainer.progress=false "$@"
  done
done
