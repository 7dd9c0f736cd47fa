# `make test` and `make demo` create .venv on first use and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo demo-quick install clean

$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	TORCH_HOME=$${TMPDIR:-/tmp}/bingo-torch-home $(BIN)/python -m pytest -q tests

demo: $(BIN)/.installed
	$(BIN)/python -m scripts.demo

demo-quick: $(BIN)/.installed
	$(BIN)/python -m scripts.demo --quick

clean:
	rm -rf $(VENV) .pytest_cache
