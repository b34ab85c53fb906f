# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: demo test test-big lint bench clean

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

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
