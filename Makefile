# `make run`: set up, then execute every notebook headless (PROFILE=smoke|full, CHALLENGE=<name> ...).
# `make test`: set up, then lint and run the test suite (unit tests + every notebook in the smoke profile).
# `make predict CHALLENGE=<name> FILES="a.jpg folder/"`: the challenge's committed predictor on your inputs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke
CHALLENGE ?=
FILES ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup system-packages prepare run predict test results tensorboard

setup: $(VENV)/.installed system-packages

# BLAST+ (the tale challenge's baseline, its predictor and its Swiss-Prot reader) and DIAMOND (its alignment of
# the whole pool) come from Debian/Ubuntu packages. Without them only tale cannot run: setup warns and goes on.
SYSTEM_PACKAGES := ncbi-blast+ diamond-aligner
system-packages:
	@(command -v blastp && command -v diamond) >/dev/null \
		|| $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1 \
		|| ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1) \
		|| echo "WARNING: could not install $(SYSTEM_PACKAGES) with apt-get; tale needs them, the others do not"

$(VENV)/.installed: requirements.txt pyproject.toml $(wildcard */__init__.py)  # a new challenge package reinstalls
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .  # mlkit and the challenges, importable anywhere
	touch $@

prepare: setup
	$(PY) -m mlkit.datasets

run: prepare
	$(PY) -m mlkit.notebooks --profile $(PROFILE) $(CHALLENGE)

predict: setup
	$(PY) -m mlkit.predict $(CHALLENGE) $(FILES)

test: prepare
	$(PY) -m ruff check .
	$(PY) -m pytest

results: setup
	$(PY) -m mlkit.results

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir .
