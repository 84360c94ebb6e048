"""python -m lora_lab.bench: see lora_lab/bench/__init__.py."""

from lora_lab import config
from lora_lab.bench.cli import main

if __name__ == "__main__":
    try:
        main()
    except config.USER_ERRORS as err:  # e.g. --model nope: one line, exit 2, as the runner says it
        config.fail(err)
