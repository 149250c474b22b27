# Set-up is part of every target: a fresh clone needs nothing but python3 (>= 3.11) and pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bench test test-fast rehearse lint clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned, so pip takes the CPU build on disk rather than resolving a CUDA one.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

bench: $(VENV)/.installed  ## the main job: the benchmark suite on what ships
	$(PY) -m pytest benchmarks $(ARGS)

# one test file per process, up to 4 (pytest-xdist): the Ray, PostgreSQL and distribution tests wait on
# subprocesses, so 2 processes on 2 cores took 10 min 51 s against 15 min 11 s in one
test: $(VENV)/.installed  ## unit and property tests
	$(PY) -m pytest tests -n auto --maxprocesses 4 --dist loadfile --benchmark-disable $(ARGS)

# the tier to run before each commit: everything but the tests marked `full` (Ray, PostgreSQL, the built wheel, the
# rehearsal's stand-ins, whole suite runs in a subprocess or of a whole family)
test-fast: $(VENV)/.installed  ## the unit and property tests without the full tier's slowest
	$(PY) -m pytest tests -n auto --maxprocesses 4 --dist loadfile --benchmark-disable -m "not full" $(ARGS)

rehearse: $(VENV)/.installed  ## every hub case end to end, offline, on miniature stand-ins (docs/hub.md: The hub tier, rehearsed)
	$(PY) -m pytest benchmarks -m hub --rehearse --benchmark-disable $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sae_bench tests benchmarks measurements conftest.py setup.py

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .hypothesis
