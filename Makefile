# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Each creates its virtual environment on first use (the pinned CPU torch first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?=
TORCH ?= torch==2.13.0
# Test files are dealt to up to 4 processes (2 on CI's 2 cores): many tests wait on worker processes and local
# servers. PYTEST_ARGS= runs them in one process.
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: demo test test-zarr2 lint bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VENV)/bin/python -m pip install -q -e ".[test]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ssl4eo-zarr demo

lint: $(VENV)/.installed
	$(VENV)/bin/python -m ruff check .
	$(VENV)/bin/python -m mypy

test: lint
	$(VENV)/bin/python -c "import zarr, xarray; print('zarr', zarr.__version__, 'xarray', xarray.__version__)"
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The same suite where users pin zarr-python 2.18.
test-zarr2:
	$(MAKE) test VENV=.venv-zarr2 CONSTRAINTS=ci/constraints-zarr2.txt

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/loader.py

clean:
	rm -rf .venv .venv-zarr2 ssl4eo-demo .pytest_cache
