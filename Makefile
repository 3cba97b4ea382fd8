# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install chromium

install: $(VENV)/.installed

# torch is pinned through constraints.txt: here that takes the local CPU build of 2.13.0 instead of the newest
# release with several GB of CUDA packages; on a GPU machine the same pin takes PyPI's CUDA build of 2.13.0.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

# The bundled weather-tags demo: seed set for training, a broad analysis set (mined for patterns), a test set of
# the same distribution (only measured), corner cases; then the few-shot baseline, rounds until the test split
# plateaus, and the ceiling (the same recipe on every analysis example) the report reads them against. Ingest
# skips what the store already holds.
demo: install
	$(BIN)/refinery ingest data/demo/seed.jsonl --split train --source seed
	$(BIN)/refinery ingest data/demo/eval.jsonl --split analysis
	$(BIN)/refinery ingest data/demo/test.jsonl --split test
	$(BIN)/refinery ingest data/demo/corner.jsonl --split corner
	HF_HUB_OFFLINE=1 $(BIN)/refinery baseline
	HF_HUB_OFFLINE=1 $(BIN)/refinery iterate --until-plateau
	HF_HUB_OFFLINE=1 $(BIN)/refinery ceiling
	$(BIN)/refinery status
	$(BIN)/refinery report

# The report's test opens the page in headless Chromium: Debian's package, installed here when missing (as root).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null) || \
		echo "chromium is not installed (apt-get needs root): the report's browser test is skipped outside CI."

test: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)
