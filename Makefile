# Precision-marketing platform: the two commands are `make demo` and `make test`.
# Everything installs into .venv from PyPI with the pinned versions in constraints.txt.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency pins or the package metadata change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha1sum | cut -c1-12)
PROTO_STAMP := protos/.generated-$(shell cat protos/marketing/v1/*.proto protos/codegen.py 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help install browser proto demo test test-unit test-helm test-cluster lint-ansible bench bench-serving bench-events bench-features bench-recs bench-tune bench-bandits clean distclean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,cluster]'
	# MovieLens-100k ships inside the recbole wheel (GroupLens terms forbid redistributing it);
	# only its data file is read, so its dependencies (torch, ...) are not installed.
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps recbole
	@rm -f $(VENV)/.installed-*
	@touch $@

$(PROTO_STAMP): $(STAMP) $(wildcard protos/marketing/v1/*.proto) protos/codegen.py
	$(BIN)/python -m protos.codegen
	@rm -f protos/.generated-*
	@touch $@

install: $(STAMP) $(PROTO_STAMP) ## Create .venv, install pinned dependencies, generate gRPC stubs.

proto: $(STAMP) ## Regenerate the gRPC stubs from protos/.
	$(BIN)/python -m protos.codegen

demo: install ## Run the whole chain on generated data (embedded profile) and print a summary.
	$(BIN)/pmkt demo

browser: ## Headless Chromium for the report test (Debian's chromium; installed with apt when run as root).
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (headless browser of the report test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  else echo "the report test needs chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

test: install browser ## Unit tests, the end-to-end slice, the Helm chart, then the local cluster: lint, provision, integration tests, teardown.
	$(BIN)/python -m pytest tests/unit tests/e2e --durations=15 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-helm
	@if [ "$${PMKT_SKIP_CLUSTER:-0}" = 1 ]; then echo "PMKT_SKIP_CLUSTER=1: cluster tests skipped"; \
	else $(MAKE) --no-print-directory test-cluster; fi

test-helm: install ## The Helm chart offline: pinned helm (helm/tools.sh), lint, render, Kubernetes + KubeRay schemas, promises.
	helm/tools.sh
	$(BIN)/python -m pytest tests/helm $(PYTEST_ARGS)

test-cluster: install lint-ansible ## Provision the local 1-master/2-worker cluster, run tests/integration, tear down (root).
	tests/integration/run_on_cluster.sh $(PYTEST_ARGS)

lint-ansible: install ## ansible-lint (production profile, offline) on ansible/.
	cd ansible && ../$(BIN)/ansible-lint --offline

test-unit: install ## Unit tests only (nothing running needed).
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: install ## All benchmarks (each prints figures and a ratio against a baseline run in the same process).
	$(BIN)/python tests/benchmarks/bench_segment_grpc.py
	$(BIN)/python tests/benchmarks/bench_serving.py
	$(BIN)/python tests/benchmarks/bench_events.py
	$(BIN)/python tests/benchmarks/bench_features.py
	$(BIN)/python tests/benchmarks/bench_recs_movielens.py
	$(BIN)/python tests/benchmarks/bench_ctr_search.py
	$(BIN)/python tests/benchmarks/bench_bandits.py

bench-serving: install ## GetProfile, ScoreBatch over gRPC (ghz) and HTTP (vegeta): Serve (proxy, direct) vs plain grpcio / FastAPI floors, closed and open loop, autoscaling.
	$(BIN)/python tests/benchmarks/bench_serving.py

bench-recs: install ## Recommenders on MovieLens-100k (75/25 per-user split): P@10, NDCG@10, MAP vs the reference table.
	$(BIN)/python tests/benchmarks/bench_recs_movielens.py

bench-tune: install ## CTR search: ASHA against the full grid in one run (compute used, best score).
	$(BIN)/python tests/benchmarks/bench_ctr_search.py

bench-events: install ## Real-time intake: events/s through Serve vs in-process, acceptance -> visible p99.
	$(BIN)/python tests/benchmarks/bench_events.py

bench-bandits: install ## Channel policies (served Thompson vs UCB1 vs fixed split): regret, revenue; mSPRT vs repeated z-test false positives.
	$(BIN)/python tests/benchmarks/bench_bandits.py

bench-features: install ## Spark feature build on 1 M and 5 M events (local[2]) vs a pandas baseline.
	$(BIN)/python tests/benchmarks/bench_features.py

clean: ## Remove generated data (var/) and caches; keeps .venv.
	rm -rf var .pytest_cache protos/.generated-*
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean ## Also remove .venv and .tools (the pinned helm and KubeRay CRDs).
	rm -rf $(VENV) .tools
