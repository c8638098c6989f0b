# ssr_tf: `make demo` and `make test` do all set-up on a fresh machine (only Python 3.11 needed).
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo_out
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv ops demo test test-fast clean docs

$(STAMP): requirements.txt requirements-dev.txt setup.py
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ssr_tf needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Builds the fused custom-op library (ops/_ssr_ops.so) with tf.sysconfig flags.
ops: $(STAMP)
	$(BIN)/python ops/build.py

demo: ops
	bash scripts/demo.sh

test: ops
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-fast: ops
	$(BIN)/python -m pytest tests -q -p no:cacheprovider -m "not slow"

clean:
	rm -rf $(DEMO) build ops/build ops/*.so *.egg-info

# Regenerates docs/config.md, the configuration reference, from the config dataclasses
# (`$(BIN)/python scripts/config_reference.py --check docs/config.md` exits 1 when it is stale).
docs: $(STAMP)
	$(BIN)/python scripts/config_reference.py --write docs/config.md
