# Two commands from a fresh clone: `make up` (set up and run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up test test-slow fuzz lint format bench soak install clean

up: $(STAMP)
	$(BIN)/daemoneye up

test: $(STAMP)
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# the default suite runs each fuzzer a few seconds; this runs each for two minutes
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet atheris
	mkdir -p build/fuzz
	for f in tests/fuzz/fuzz_*.py; do $(BIN)/python $$f -max_total_time=120 -artifact_prefix=build/fuzz/ || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# every benchmark but the soak (10 minutes, root; `make soak`) and the shared helpers
bench: $(STAMP)
	for b in bench/[!_]*.py; do [ $$b = bench/soak.py ] || $(BIN)/python $$b || exit 1; done

soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10 --rate 1000

install: $(STAMP)

# the C extensions are built into libs/ by the editable install: rebuilt when their source changes
$(STAMP): pyproject.toml setup.py libs/daemoneye/_wirecheck.c libs/daemoneye/_procread.c libs/daemoneye/_wirepack.c libs/daemoneye/_wireread.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info libs/daemoneye/_wirecheck.*.so libs/daemoneye/_procread.*.so libs/daemoneye/_wirepack.*.so libs/daemoneye/_wireread.*.so
