# flow_anomaly_ros developer entry points. `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test lint demo bench clean help

help:
	@echo "make demo   - set up, build the demo bag and models, run the nodes on it, write demo/report/index.html"
	@echo "make test   - set up, lint (ruff), run the whole pytest suite with ROS isolation"
	@echo "make bench  - run the benchmarks; Markdown tables go to bench/results/"
	@echo "make setup  - create .venv (pinned deps, ROS 2 Kilted wheels, messages); idempotent"

setup:
	@bash tools/setup.sh

lint: setup
	$(VENV)/bin/ruff check flow_anomaly_ros test bench tools launch scripts
	$(VENV)/bin/ruff format --check flow_anomaly_ros test bench tools launch

# Each run gets its own DDS domain, localhost-only discovery and a throwaway log directory (see test/conftest.py).
test: setup lint
	@logdir=$$(mktemp -d); \
	 ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$(( (RANDOM % 80) + 10 ))} ROS_LOG_DIR=$$logdir \
	 $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; rm -rf $$logdir; \
	 if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

demo: setup
	$(VENV)/bin/flow-anomaly demo run $(DEMO_ARGS)

bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build install log .pytest_cache .ruff_cache
