# Developer entry points. Everything the service needs is installed from here.

VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Records the last install; redone only when the package's metadata changes.
STAMP := $(VENV)/.installed

# Defaults for `make run`; the environment (or `make run PORT=9000`) wins.
PORT ?= 8000
REDIS_URL ?= redis://localhost:6379/0
FLOWER_PORT ?= 5555
export PORT REDIS_URL FLOWER_PORT

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

# On one machine the receiver listens on loopback unless told otherwise
# (`make run BIND_ADDRESS=0.0.0.0`); the service's own default is every interface.
run: install
	scripts/ensure-redis.sh
	$(VENV)/bin/webhook-ingest check-config
	BIND_ADDRESS="$${BIND_ADDRESS:-127.0.0.1}" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		$(VENV)/bin/honcho start -f Procfile

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
