# av-fusion: `make demo` and `make test` work on a fresh clone with only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# the venv's bin first: DeepSpeed's JIT op builds need the pip-installed `ninja`
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install install-dev lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[dev,lmms]"
	# lmms-eval's own pins (av<16, wandb==0.25.0, torchvision + CUDA torch) conflict with ours: no dependencies
	$(PY) -m pip install --quiet --no-deps "lmms-eval>=0.6,<0.8"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed-dev
	WANDB_MODE=disabled $(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check fusion train eval scripts tests

clean:
	rm -rf $(VENV) runs .pytest_cache
