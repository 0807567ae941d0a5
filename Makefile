# av-fusion: `make demo` and `make test` work on a fresh clone with only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# every install goes through the lock (exact versions the suite last passed with); `make lock` refreshes it
LOCK := requirements/constraints.txt
PIP := $(PY) -m pip install --quiet -c $(LOCK)
# the venv's bin first: DeepSpeed's JIT op builds need the pip-installed `ninja`
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install install-dev lint lock clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PIP) -e ".[dev,lmms]"
	# lmms-eval's own pins (av<16, wandb==0.25.0, torchvision + CUDA torch) conflict with ours: no dependencies
	# (the conflicts this leaves are listed in requirements/known-conflicts.txt; tests/test_environment.py checks)
	$(PIP) --no-deps "lmms-eval>=0.6,<0.8"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed-dev
	WANDB_MODE=disabled $(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check fusion train eval scripts tests

# rebuild the lock in a scratch venv from pyproject.toml, run the suite on it, and only then replace it
lock:
	$(PYTHON) scripts/lock.py --python $(PYTHON)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
