# Entry points for a newcomer: `make run` and `make test`. Each one sets up what it needs
# (virtual environment, Python packages, Debian packages) and does nothing twice.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
DEBS := dataset-fashion-mnist chromium g++
UI := frontend/dist/index.html
UI_SOURCES := $(shell find frontend/src frontend/scripts -type f -not -name schema.d.ts 2>/dev/null) \
	frontend/index.html frontend/package.json frontend/vite.config.ts frontend/tsconfig.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup debs ui services run test lint bench clean

setup: $(PY_STAMP) debs ui

$(PY_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Debian packages the product and tests read (Fashion-MNIST lives in /usr/share/datasets;
# chromium runs the browser tests; Node.js and npm build the web UI; g++ compiles the fused
# quantizer kernels, quantcore/fusion.py).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; \
	fi

# The web UI, built to frontend/dist (served by the API at /). Its typed client is generated
# from the API's OpenAPI schema at build time, so a change to the API rebuilds it.
ui: $(UI)

frontend/node_modules/.package-lock.json: frontend/package-lock.json | debs
	cd frontend && npm ci --no-audit --no-fund

$(UI): frontend/node_modules/.package-lock.json $(UI_SOURCES) $(PY_STAMP) $(wildcard api/*.py api/routes/*.py)
	cd frontend && PYTHON=$(abspath $(PY)) npm run build

# The whole product on its embedded defaults: SQLite, blobs and a filesystem broker under ./var,
# one worker process, the API on http://127.0.0.1:8000 (QS_* variables override; see README).
run: setup
	$(PY) -m api embedded --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

# Every test: unit, and integration against PostgreSQL, Redis and real worker processes; the
# web UI's own unit tests (vitest) and its browser tests (tests/e2e, headless chromium).
test: setup services
	cd frontend && npm test --silent
	$(PY) -m pytest -q

services:
	bash scripts/services.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy quantcore api worker
	cd frontend && npm run --silent lint

bench: setup
	$(PY) bench/packing.py --count 100000000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis frontend/node_modules frontend/dist
