# Fresh machine: `make test` and `make demo` create .venv and install into it on first use.
PY := .venv/bin/python
export LORA_LAB_ASSETS ?= $(abspath ../shared)

.PHONY: test test-fast test-gpu demo clean

.venv/installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock   # exact versions; torch's CPU build (local disk here, not GBs of CUDA)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Both cores (-n 2); worksteal: a worker that runs dry takes tests queued on the other, so that the long tests
# dealt out first do not leave one core idle at the end.
test: .venv/installed
	$(PY) -m ruff check lora_lab tests experiments notebooks
	$(PY) -m ruff format --check lora_lab tests experiments notebooks
	$(PY) -m mypy lora_lab
	$(PY) -m mkdocs build --strict --site-dir $$(mktemp -d)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 tests

# The inner loop: everything but the tests marked slow (a second or more each), on both cores.
test-fast: .venv/installed
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" tests

# On a machine with CUDA, with a python whose torch has CUDA and this package's dependencies (e.g. PY=python3):
# what the CPU tests check by patching torch's CUDA queries, on the device itself.
test-gpu:
	$(PY) -m pytest -q -rs tests/test_gpu.py

demo: .venv/installed
	$(PY) -m lora_lab.params model=distilbert
	$(PY) -m lora_lab.run experiment=smoke force=true results_dir=outputs/demo

clean:
	rm -rf outputs multirun .pytest_cache site
