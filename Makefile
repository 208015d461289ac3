# Entry points for a newcomer: `make run` and `make test`. Each one sets up what it needs
# (virtual environment, Python packages, Debian packages) and does nothing twice.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
DEBS := dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup debs services run test lint bench clean

setup: $(PY_STAMP) debs

$(PY_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Debian packages the product and tests read (Fashion-MNIST lives in /usr/share/datasets).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; \
	fi

# The whole product on its embedded defaults: SQLite, blobs and a filesystem broker under ./var,
# one worker process, the API on http://127.0.0.1:8000 (QS_* variables override; see README).
run: setup
	$(PY) -m api embedded --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

# Every test: unit, and integration against PostgreSQL, Redis and real worker processes.
test: setup services
	$(PY) -m pytest -q

services:
	bash scripts/services.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy quantcore api worker

bench: setup
	$(PY) bench/packing.py --count 100000000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
