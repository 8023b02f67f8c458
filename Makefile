# Entry points: `make demo` (install + a real search on embedded defaults), `make test` (the whole suite, as CI
# runs it) and `make test-fast` (the tests not marked slow: the edit loop).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test test-fast fuzz ui-check clean

install: $(VENV)/.installed

# torch first and pinned: on CPU machines `torch==2.13.0` is the local CPU wheel; the project itself only asks
# for a compatible range, so pip keeps whatever build (CPU or CUDA) is already installed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/hps run configs/digits.yaml --overwrite

# Two workers, one test file at a time each (pytest-xdist): a search's wall time is mostly its trial worker
# starting, on one core, so the other core runs another file meanwhile. Each worker has its own Ray and MLflow server.
# Files go out in the order tests/conftest.py sorts them (longest first), not xdist's default (most tests first).
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The edit loop: every test not marked slow (no real search, no Ray), in under two minutes.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder

# The fuzz harnesses' longer run (the suite tries 60 generated data files per kind): data files, IDX folders and
# config files, 2000 each, without the whole-search cases (those are in `make test`).
fuzz: install
	HPS_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -m "not slow" -q tests/trainables/test_fuzz_data.py tests/config/test_fuzz_config.py

# The MLflow UI in a real headless Chromium (apt-get install chromium): datasets and models where users look.
ui-check: install
	HPS_UI_CHECK=1 $(BIN)/python -m pytest -q tests/records/test_mlflow_ui.py

clean:
	rm -rf hps-runs mlruns.db .pytest_cache
