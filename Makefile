# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: demo test test-big lint bench mutation clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/implant-bone-contact demo --out $(DEMO_OUT) --overwrite
	@echo "Results in $(DEMO_OUT)/results (report.html, zones.csv, vertices.csv, pictures)"

test: $(VENV)/.installed-test
	$(BIN)/ruff check ImplantBoneContact Testing benchmarks
	$(BIN)/python -m pytest -m "not slow"

# Big inputs (1M-triangle STL, 512x512x1500 CT): about 4 min, 2.2 GB RAM, 1 GB of temporary files.
test-big: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow -s

$(VENV)/.installed-mutation: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test,mutation]"
	touch $(VENV)/.installed $(VENV)/.installed-test $@

# Mutation testing of the core modules with mutmut, at the lowest CPU priority; not part of `make test`.
# MODULES="classes stats" mutates some modules only; scores in build/mutation/<module>/score.json (see TESTING.md).
MODULES ?=
MUTATION_JOBS ?= 2
mutation: $(VENV)/.installed-mutation
	nice -n 19 $(BIN)/python Testing/Mutation/run_mutation.py --jobs $(MUTATION_JOBS) $(MODULES)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
