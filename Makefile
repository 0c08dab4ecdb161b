# Market-data streaming: local runs, tests, emulators. Google Cloud targets live in deploy/deploy.mk.
#   make demo      whole chain on the bundled sample: emulators, ingest, streaming pipeline, BigQuery
#   make replay    bundled sample through the pipeline from the file (no emulator), to out/replay
#   make test      everything CI runs, from a fresh clone (creates its own venvs, npm install)

PYTHON ?= python3
VENV := .venv
VENV_BQ := .venv-bq
PY := $(VENV)/bin/python
MDS := $(VENV)/bin/mds
NODE_DIR := ingest/nodejs
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv venv-bq node-deps deps replay demo test test-python test-node emulators-up \
	emulators-down emulators-status bench step-names lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: setup.py templates/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# the template's pins keep local, CI and Dataflow on the same versions
	$(VENV)/bin/pip install --quiet -c templates/requirements.txt -e '.[test,chart]'
	touch $@

$(VENV_BQ)/.installed:
	$(PYTHON) -m venv $(VENV_BQ)
	$(VENV_BQ)/bin/pip install --quiet --upgrade pip
	# bqemulator lives apart: its server stack must not pin the pipeline's dependencies
	$(VENV_BQ)/bin/pip install --quiet 'bqemulator==1.4.0' 'numpy>=2,<3'
	touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

venv: $(VENV)/.installed ## Python venv with the pipeline, ingest and test dependencies
venv-bq: $(VENV_BQ)/.installed ## separate venv for the local BigQuery API server (bqemulator)
node-deps: $(NODE_DIR)/node_modules/.installed ## npm ci for the Node.js ingest worker
deps: venv venv-bq node-deps ## everything local runs and tests need

replay: venv ## replay the bundled Binance day through the pipeline (out/replay/*.jsonl)
	$(MDS) replay --output-dir out/replay

demo: deps ## the whole chain locally: emulators, ingest worker, streaming pipeline, BigQuery views
	$(MDS) demo

test: deps test-python test-node ## all tests (Python and Node.js), from scratch

# Two workers: most tests wait on emulators, watermarks and clocks, not on the CPU.
TEST_WORKERS ?= 2

test-python: venv venv-bq
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS) tests

test-node: node-deps
	cd $(NODE_DIR) && npm test

emulators-up: venv venv-bq ## start the Pub/Sub emulator and bqemulator on loopback (idempotent)
	$(MDS) stack up

emulators-down: venv ## stop them
	$(MDS) stack down

emulators-status: venv
	$(MDS) stack status

bench: deps ## throughput/latency table (prints figures; not a test)
	$(PY) -m bench.run

step-names: venv ## rewrite tests/dataflow_step_names.txt from the Dataflow job graphs (review the diff)
	$(PY) deploy/dataflow_graph.py

clean: ## remove venvs, outputs and caches
	rm -rf $(VENV) $(VENV_BQ) out build *.egg-info .pytest_cache $(NODE_DIR)/node_modules

include deploy/deploy.mk
