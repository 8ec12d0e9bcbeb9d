# `make run`: set up, then execute every notebook headless (PROFILE=smoke|full, CHALLENGE=<name> ...).
# `make test`: set up, then lint and run the test suite (unit tests + every notebook in the smoke profile).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke
CHALLENGE ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup system-packages prepare run test results tensorboard

setup: $(VENV)/.installed system-packages

# BLAST+ (the tale challenge's baseline and its Swiss-Prot reader) comes from Debian/Ubuntu packages.
system-packages:
	@command -v blastp >/dev/null || $(SUDO) apt-get install -y -qq ncbi-blast+ >/dev/null \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq ncbi-blast+ >/dev/null)

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

prepare: setup
	$(PY) -m mlkit.datasets

run: prepare
	$(PY) -m mlkit.notebooks --profile $(PROFILE) $(CHALLENGE)

test: prepare
	$(PY) -m ruff check .
	$(PY) -m pytest

results: setup
	$(PY) -m mlkit.results

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir .
