# tunedeck: `make run` starts the dashboard with a demo, `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0

.PHONY: install run test test-fast lint format bench bench-gpu gpu-kit browser clean

install: $(STAMP)

# torch first, pinned: this machine serves a CPU build of it from disk; a bare `torch` would pull CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

# Real-browser tests drive Debian's chromium through Playwright (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

run: install
	$(VENV)/bin/tunedeck demo prepare
	$(VENV)/bin/tunedeck serve --demo

test: install browser
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install browser
	$(PY) -m bench

# One GPU, at most 8 minutes, no downloads: tunedeck's training path against the plain recipe on Llama-3.2-1B,
# Qwen2.5-1.5B and bloom-1b4 shapes (bench/gpu_train.py). No `install` step: it runs in whatever environment has
# the GPU build of torch (PY=python to use the one on PATH). Results: $(BENCH_OUT)/gpu-train.{json,md}.
BENCH_OUT ?= $(or $(OUT),bench-results)
bench-gpu:
	$(PY) -m bench.gpu_train --out $(BENCH_OUT)

# For a lent GPU machine that reaches no registry (the `device` tool): the wheels its image lacks, into .whl/;
# there, `bash bench/gpu_device.sh` (carry .whl) installs them and runs bench-gpu (bench/gpu_kit.py says how).
gpu-kit: install
	$(PY) -m bench.gpu_kit

clean:
	rm -rf data .cache .pytest_cache .mypy_cache .ruff_cache
