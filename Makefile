# The two commands that matter: `make demo` (the main job, offline) and `make test` (everything).
# Each sets up what it needs on a machine that has only Python 3.10+ and make, and is fast when already set up.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
VENV3 := .venv-genai3
BIN3 := $(VENV3)/bin
GCP_VENV := .venv-gcp-emulators
export UV_LINK_MODE := copy

.PHONY: help setup setup-genai3 setup-gcp-emulators demo demo-change-rows demo-bigquery test test-genai3 lint bench emulator airflow browser lock clean

help:
	@echo "make demo      run the main job: a table -> Gemini batch -> table DAG, offline against the emulator"
	@echo "make demo-bigquery  the same from a BigQuery table to a BigQuery table, against the GCP emulators"
	@echo "               (DATE=YYYY-MM-DD: the run's date; make demo-change-rows N=30: change 30 prompts)"
	@echo "make test      run the whole test suite (google-genai 2.x, then the SDK suite on 3.x)"
	@echo "make lint      ruff and mypy"
	@echo "make bench     benchmarks (ratios against floors measured in the same run)"
	@echo "make emulator  run the Gemini Batch API emulator on 127.0.0.1:8765"
	@echo "make airflow   Airflow standalone (UI, scheduler, triggerer) with the emulator and example DAGs"

# uv installs Airflow and its providers in seconds where pip takes minutes; it is bootstrapped into the venv.
$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(BIN)/uv requirements/lock.txt pyproject.toml
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements/lock.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

setup: $(VENV)/.installed

# A second environment with google-genai 3.x (apache-airflow-providers-google still pins 2.x, so it is
# overridden there: our code does not use the provider's gen_ai module). google-genai 3 needs Python 3.11+.
$(VENV3)/.installed: $(BIN)/uv requirements/lock-genai3.txt pyproject.toml
	test -x $(BIN3)/python || $(BIN)/uv venv -q --python $(BIN)/python $(VENV3)
	$(BIN)/uv pip sync -q --python $(BIN3)/python requirements/lock-genai3.txt
	$(BIN)/uv pip install -q --python $(BIN3)/python --no-deps -e .
	@touch $@

setup-genai3: $(VENV3)/.installed

# The GCP emulators (bqemulator, gcp-storage-emulator) in a TOOL environment of their own, never the product's:
# the BigQuery / GCS tests start them as processes. Needs Python 3.11+ (bqemulator); without one the script says
# that those tests are skipped (in CI, GEMINI_BATCH_REQUIRE_GCP=1, it fails instead).
$(GCP_VENV)/.installed: $(BIN)/uv requirements/gcp-emulators.lock scripts/setup-gcp-emulators.sh
	@sh scripts/setup-gcp-emulators.sh $(BIN)/uv $(GCP_VENV)

setup-gcp-emulators: $(GCP_VENV)/.installed

# DATE=YYYY-MM-DD picks the run's logical date (default today): another date is a new DAG run.
demo: setup
	$(BIN)/python scripts/demo.py $(if $(DATE),--date $(DATE))

# Change N (default 30) demo products' prompts: the next incremental `make demo DATE=...` sends exactly those.
demo-change-rows: setup
	$(BIN)/python scripts/demo.py --change-rows $(or $(N),30)

# The BigQuery example DAG (dags/example_bigquery.py) against the Gemini, BigQuery and GCS emulators, offline.
demo-bigquery: setup setup-gcp-emulators
	$(BIN)/python scripts/demo_bigquery.py

test: setup browser setup-gcp-emulators
	$(BIN)/pytest
	@if $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		$(MAKE) --no-print-directory test-genai3; \
	else \
		echo "SKIPPED: the google-genai 3.x suite (google-genai 3 needs Python 3.11+; this is $$($(BIN)/python -V))"; \
	fi

# The whole suite again on google-genai 3.x (default REST version v1, httpx2 and aiohttp transports); the browser
# test drives the same page as on 2.x and is left out.
test-genai3: setup-genai3
	$(BIN3)/pytest --ignore=tests/plugins/test_browser.py --ignore=tests/e2e

# Debian's chromium for the UI browser test (installed with apt-get when missing and root; never downloaded
# by Playwright). Without it the browser test skips locally and fails in CI.
browser:
	@sh scripts/install-chromium.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --no-cache .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

emulator: setup
	$(BIN)/gemini-batch-emulator --host 127.0.0.1 --port 8765 --pending-seconds 2 --running-seconds 5

airflow: setup
	$(BIN)/python scripts/demo.py --standalone

lock: $(BIN)/uv
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.10 -o requirements/lock.txt
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 \
		--override requirements/genai3-override.txt -o requirements/lock-genai3.txt
	$(BIN)/uv pip compile -q requirements/gcp-emulators.in --python-version 3.11 -o requirements/gcp-emulators.lock

clean:
	rm -rf $(VENV) $(VENV3) $(GCP_VENV) .demo .pytest_cache
