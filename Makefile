# meshwatch: the two commands are `make demo` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DISTS := instrumentation collector stack demo-services dashboards alerts
# What pip installs: the distributions, editable, with the extras the tests exercise.
DIST_SPECS := ./instrumentation[all] ./collector ./stack ./demo-services ./dashboards ./alerts
PYTEST_ARGS ?=
# Both ends of the OpenTelemetry range instrumentation/pyproject.toml allows (sdk=contrib), each
# tested in its own venv by instrumentation/sdk-range.sh (the end .venv is pinned to, the newest
# installable one, 1.45.1=0.66b1, is skipped: the main suite runs on it).
SDK_RANGE ?= 1.45.0=0.66b0 1.45.1=0.66b1

.DEFAULT_GOAL := help
.PHONY: lock help venv backends test lint unit sdk-range stack stack-down stack-status demo demo-down wheels clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt constraints.txt $(addsuffix /pyproject.toml,$(DISTS)) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshwatch needs Python 3.11+: set PYTHON=python3.11")'
	@echo "==> creating $(VENV) and installing meshwatch (editable) with test tools"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off $(addprefix -e ,$(DIST_SPECS)) -r requirements-dev.txt -c constraints.txt
	@touch $@

venv: $(STAMP) ## create .venv with all meshwatch distributions and test tools

backends: $(STAMP) ## install Jaeger, Prometheus, Alertmanager, Elasticsearch, Redis, NATS, Kafka, the reference otelcol once (cached per machine)
	@$(VENV)/bin/meshwatch-stack install

lint: $(STAMP) ## ruff
	@$(VENV)/bin/ruff check --no-cache .
	@$(VENV)/bin/ruff format --no-cache --check --quiet . || (echo "run: $(VENV)/bin/ruff format ." && exit 1)

sdk-range: $(STAMP) ## the instrumentation tests on the oldest and newest supported OpenTelemetry SDK
	@instrumentation/sdk-range.sh $(PYTHON) $(SDK_RANGE)

test: $(STAMP) backends lint sdk-range ## set up everything and run the whole test suite against real backends
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: $(STAMP) ## only the tests that need no server
	@$(VENV)/bin/pytest -m "not integration and not e2e" $(PYTEST_ARGS)

stack: backends ## start the backends on their usual ports and print their URLs
	@$(VENV)/bin/meshwatch-stack up

stack-down: $(STAMP) ## stop the backends `make stack` started
	@$(VENV)/bin/meshwatch-stack down

stack-status: $(STAMP) ## show what runs and where
	@$(VENV)/bin/meshwatch-stack status

demo: backends ## start the demo platform (backends, collector, six services, load) and print its URLs
	@$(VENV)/bin/meshwatch-demo up $(DEMO_ARGS)

demo-down: $(STAMP) ## stop the demo platform (everything it and meshwatch-stack started)
	@$(VENV)/bin/meshwatch-demo down

wheels: $(STAMP) ## build a wheel of each distribution into dist/, to install meshwatch outside this checkout
	@$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist $(addprefix ./,$(DISTS))
	@ls dist/*.whl

clean: ## remove the virtual environment (the backend cache stays)
	rm -rf $(VENV) .venv-sdk-* .pytest_cache .ruff_cache dist

lock: $(STAMP) ## re-resolve the newest allowed versions into constraints.txt (then run make test)
	@$(PY) -m pip install --quiet --upgrade $(addprefix -e ,$(DIST_SPECS)) -r requirements-dev.txt
	@{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.tmp && mv constraints.tmp constraints.txt
