# `make test` and `make demo` create .venv on first use and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: test test-fast demo demo-quick demo-data install clean gpu-wheels

$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(BIN)/.installed

# Fashion-MNIST from Debian's package registry (the demo falls back to torchvision's download where there is internet).
demo-data:
	@test -f $(FMNIST) || apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	  || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
	  || echo "note: could not install dataset-fashion-mnist (not root?); the demo will try torchvision's download"

# Two test processes (pytest-xdist), each taking whole files so module fixtures are built once, in the order
# tests/conftest.py sets (the longest first); temporary folders are kept only for failed tests (a full run writes
# about 10 GB of checkpoints).
test: $(BIN)/.installed demo-data
	$(BIN)/ruff check .
	TORCH_HOME=$${TMPDIR:-/tmp}/bingo-torch-home MPLCONFIGDIR=$${TMPDIR:-/tmp}/bingo-mpl PYTHONDONTWRITEBYTECODE=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed -n 2 --dist loadfile \
	  --no-loadscope-reorder tests

# The tests that start no process (tests/conftest.py marks the others slow), for a quick check while editing.
test-fast: $(BIN)/.installed
	TORCH_HOME=$${TMPDIR:-/tmp}/bingo-torch-home MPLCONFIGDIR=$${TMPDIR:-/tmp}/bingo-mpl PYTHONDONTWRITEBYTECODE=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed -m "not slow" tests

demo: $(BIN)/.installed demo-data
	$(BIN)/python -m scripts.demo

demo-quick: $(BIN)/.installed demo-data
	$(BIN)/python -m scripts.demo --quick

# Wheels for a GPU machine that cannot reach the registries (Python 3.12): bench/gpu_suite.sh installs .whl/*.whl.
gpu-wheels: $(BIN)/.installed
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0
	$(BIN)/python -m pip wheel -q --no-deps -w .whl efficientnet_pytorch==0.7.1

clean:
	rm -rf $(VENV) .pytest_cache
