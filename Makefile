# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install

install: $(VENV)/.installed

# torch is pinned through constraints.txt: here that takes the local CPU build of 2.13.0 instead of the newest
# release with several GB of CUDA packages; on a GPU machine the same pin takes PyPI's CUDA build of 2.13.0.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

# The bundled weather-tags demo: seed set for training, broad held-out set dealt into analysis/test, corner cases;
# then three rounds. Ingest skips what the store already holds, so running it again just adds three more rounds.
demo: install
	$(BIN)/refinery ingest data/demo/seed.jsonl --split train --source seed
	$(BIN)/refinery ingest data/demo/eval.jsonl --split holdout
	$(BIN)/refinery ingest data/demo/corner.jsonl --split corner
	HF_HUB_OFFLINE=1 $(BIN)/refinery iterate --rounds 3
	$(BIN)/refinery status

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)
