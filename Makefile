# Developer entry points. Everything the service needs is installed from here.

VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Records the last install; redone only when the package's metadata changes.
STAMP := $(VENV)/.installed

# The tests' own database, so running them never touches `make run`'s data.
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
export TEST_REDIS_URL
PYTEST_ARGS ?=

.PHONY: install run test test-faults lint clean bench

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

# .env (if present), a Redis of its own, the preflight, then the Procfile; the
# environment (or `make run PORT=9000`) wins over .env. See scripts/run.sh.
run: install
	VENV='$(CURDIR)/$(VENV)' scripts/run.sh

test: install
	REDIS_URL='$(TEST_REDIS_URL)' scripts/ensure-redis.sh --with-binary
	scripts/ensure-nginx.sh
	scripts/ensure-promtool.sh $(VENV)/bin
	$(VENV)/bin/pytest -m 'not faults' $(PYTEST_ARGS)

# The fault suite (docs/operations.md): kills and restarts the real processes,
# Redis and RabbitMQ; longer than the rest of the tests together, so on its own.
test-faults: install
	REDIS_URL='$(TEST_REDIS_URL)' scripts/ensure-redis.sh --with-binary
	scripts/ensure-rabbitmq.sh
	$(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

# Throughput, latency and growth figures (docs/benchmarks.md): starts its own
# Redis and the service's processes, prints a table, writes bench/results/latest.json.
bench: install
	command -v redis-server >/dev/null || apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
