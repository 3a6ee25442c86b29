# Diffusion Lessons: `make book` builds the HTML book, `make test` runs everything CI runs.
# Both create the virtual environment $(VENV) first if it is missing or out of date.

PYTHON ?= python3
VENV   ?= .venv
BUILD  ?= _build
# jupyter-book writes into $(BOOK_OUT)/_build; the HTML ends up in $(BUILD)/html.
BOOK_OUT := $(patsubst %/,%,$(dir $(abspath $(BUILD))))
# The chapters' execution cache lives outside the repository, keyed by the library's source, so a
# change to src/ re-executes every chapter and an unchanged tree reuses the stored outputs.
CACHE_ROOT ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)/diffusion-lessons/jupyter-cache
SRC_HASH   := $(shell cat requirements.txt $$(find src -name '*.py' | sort) 2>/dev/null | sha256sum | cut -c1-16)
CACHE_DIR  ?= $(CACHE_ROOT)/$(SRC_HASH)

BIN    := $(VENV)/bin
# Datasets: the team's checkout keeps them in ../shared/data; elsewhere they are downloaded and cached.
DIFFUSION_LESSONS_DATA ?= $(abspath $(wildcard ../shared/data))
export DIFFUSION_LESSONS_DATA
STAMP  := $(VENV)/.installed
JB_FLAGS ?= -W -n --keep-going
# _config.yml with the cache path (make book) or forced re-execution (make test) filled in.
WRITE_CONFIG = $(BIN)/python -c "import sys, yaml; c = yaml.safe_load(open('_config.yml')); \
	c['execute'].update(cache=sys.argv[1], execute_notebooks=sys.argv[2]); \
	yaml.safe_dump(c, open(sys.argv[3], 'w'), allow_unicode=True)"

.PHONY: help venv book book-test test test-lib lint format sync clean clean-cache

help:
	@echo "make book   build the HTML book (executes every chapter)"
	@echo "make test   lint, build the book with warnings as errors, run the whole test suite"
	@echo "make sync   regenerate the paired .ipynb files from the .md chapters"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	mkdir -p $(BUILD)
	$(WRITE_CONFIG) "$(CACHE_DIR)" cache $(BUILD)/_config.book.yml
	$(BIN)/jupyter-book build . --path-output $(BOOK_OUT) --config $(BUILD)/_config.book.yml $(JB_FLAGS)
	@echo "The book: $(abspath $(BUILD))/html/index.html"

# make test executes every chapter afresh (no cache), failing on any error or Sphinx warning.
book-test: $(STAMP)
	mkdir -p $(BUILD)
	$(WRITE_CONFIG) "$(CACHE_DIR)" force $(BUILD)/_config.test.yml
	$(BIN)/jupyter-book build . --path-output $(BOOK_OUT) --config $(BUILD)/_config.test.yml --all -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

sync: $(STAMP)
	$(BIN)/jupytext --to ipynb --update notebooks/*.md

test: lint book-test
	DIFFUSION_LESSONS_BOOK_HTML=$(abspath $(BUILD))/html $(BIN)/python -m pytest -ra --durations=10 tests

test-lib: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow" tests

clean:
	rm -rf $(BUILD)

clean-cache:
	rm -rf $(CACHE_ROOT)
