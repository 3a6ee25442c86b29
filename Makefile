# Diffusion Lessons: `make book` builds the HTML book, `make test` runs everything CI runs.
# Both create the virtual environment $(VENV) first if it is missing or out of date.

# requirements.txt is locked for CPython 3.11 on Linux x86-64 (what CI runs); see README.md.
PYTHON ?= python3
SHELL  := /bin/bash
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
# Seconds a cell may run before the build fails naming it; empty: execute.timeout in _config.yml.
# (Raise it for DIFFUSION_LESSONS_SCALE=full builds, whose models train for much longer.)
CELL_TIMEOUT ?=
# _config.yml with the cache path (make book) or forced re-execution (make test) filled in, and
# the local Sphinx extensions' folders made absolute (the copy lives in the build folder).
WRITE_CONFIG = $(BIN)/python -c "import os, sys, yaml; c = yaml.safe_load(open('_config.yml')); \
	c['execute'].update(cache=sys.argv[1], execute_notebooks=sys.argv[2]); \
	c['execute'].update({'timeout': int(sys.argv[4])} if sys.argv[4:] and sys.argv[4] else {}); \
	ext = c.get('sphinx', {}).get('local_extensions') or {}; \
	ext.update({k: os.path.abspath(v) for k, v in ext.items()}); \
	yaml.safe_dump(c, open(sys.argv[3], 'w'), allow_unicode=True)"

# The whole site in one zip that opens offline wherever it is unzipped (make book writes it).
SITE_ZIP := $(BUILD)/diffusion-lessons-html.zip
ZIP_SITE = $(BIN)/python book/_ext/offline_html.py zip $(BUILD)/html $(SITE_ZIP)

# When a chapter fails to execute, jupyter-book ends with a long traceback. This names the
# chapter, the code cell (its number and line in the .md) and what happened, in one line.
define EXPLAIN_FAILURE
import ast, os, re, sys
from pathlib import Path
log = re.sub(r"\x1b\[[0-9;]*m", "", Path(sys.argv[1]).read_text(errors="replace"))
chapter = re.search(r"ExecutionError: (\S+)", log)
timeout = re.search(r"timed out while it was being executed, after (\d+) seconds\.\n.*?\n"
                    r"Here is a preview of the cell contents:\n-+\n(.*?)\n-+\n", log, re.S)
error = re.search(r"An error occurred while executing the following cell:\n-+\n(.*?)\n-+\n", log, re.S)
dead = "DeadKernelError" in log
if chapter is None:
    sys.exit(0)
path = Path(chapter.group(1))
src = (timeout or error).group(timeout and 2 or 1) if (timeout or error) else ""
# nbclient shows a cell of 11 lines or more as two lists: its first five lines, "...", its last five.
lines = ast.literal_eval(src.splitlines()[0]) if src.startswith("[") else src.splitlines()
first = next((l.strip() for l in lines if l.strip()), None)
where, n, fence = "", 0, False
for i, line in enumerate(path.read_text().splitlines(), 1) if path.exists() else []:
    if line.startswith("```{code-cell}"):
        n, fence = n + 1, True
    elif fence and first and line.strip() == first:
        where = f"code cell {n} (line {i} of {path.name})"
        break
    elif line.startswith("```"):
        fence = False
what = (f"timed out: no reply within {timeout.group(1)} s (execute.timeout in _config.yml; "
        "override with make CELL_TIMEOUT=SECONDS)" if timeout else
        "raised an error (traceback above)" if error else
        "lost its kernel" if dead else "failed (traceback above)")
print(f"\nBook build failed: chapter {os.path.relpath(path)} stopped at {where or 'a cell'}: it {what}.")
if first:
    print(f"  the cell starts: {first}")
endef
export EXPLAIN_FAILURE

.PHONY: help venv gpu-prepare lock book book-test site-zip test fast test-lib api-pages lint format sync clean clean-cache

# The installed distributions that requirements.txt does not list (the library excepted).
define NOT_IN_LOCK
import re
from importlib.metadata import distributions
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", open("requirements.txt").read(), re.M)}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in distributions()} - locked - {"diffusion-lessons"})))
endef
export NOT_IN_LOCK

help:
	@echo "make book   build the HTML book (executes every chapter) and its offline zip"
	@echo "make test   what CI runs: make fast, the book with warnings as errors, the slow and book tests"
	@echo "make fast   lint and the fast tests (about a minute)"
	@echo "make api-pages  rewrite book/api/ from the package maps (after adding or moving a module)"
	@echo "make sync   regenerate the paired .ipynb files from the .md chapters"
	@echo "make lock   regenerate requirements.txt (the hashed lock) from requirements.in"
	@echo "make gpu-prepare  build .gpu/ (wheels, data, chapter scripts) for issue 11's device runs (gpu/README.md)"

venv: $(STAMP)

# What a bare device machine lacks, in the git-ignored .gpu/ that device calls carry (gpu/README.md).
gpu-prepare: $(STAMP)
	BIN=$(BIN) bash gpu/prepare.sh

# The environment is exactly the lock: every package pinned with its hashes (pip itself too),
# anything else uninstalled, then the library in editable mode with the locked setuptools.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))" || { echo "requirements.txt \
	is locked for CPython 3.11; run make PYTHON=python3.11 (or regenerate it: make lock)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.txt
	extra="$$($(BIN)/python -c "$$NOT_IN_LOCK")"; [ -z "$$extra" ] || $(BIN)/python -m pip uninstall --quiet --yes $$extra
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# requirements.txt from requirements.in (uv: install it anywhere but in the project's environment,
# e.g. pipx install uv). LOCK_FLAGS says where the CPU build of torch is found.
UV ?= uv
LOCK_FLAGS ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--find-links https://download.pytorch.org/whl/cpu/torch/)
lock:
	$(UV) pip compile requirements.in --generate-hashes --python-version 3.11 $(LOCK_FLAGS) \
	  --custom-compile-command "make lock" -o requirements.txt

book: $(STAMP)
	mkdir -p $(BUILD)
	$(WRITE_CONFIG) "$(CACHE_DIR)" cache $(BUILD)/_config.book.yml "$(CELL_TIMEOUT)"
	set -o pipefail; $(BIN)/jupyter-book build . --path-output $(BOOK_OUT) \
	  --config $(BUILD)/_config.book.yml $(JB_FLAGS) 2>&1 | tee $(BUILD)/book.log \
	  || { $(BIN)/python -c "$$EXPLAIN_FAILURE" $(BUILD)/book.log; exit 1; }
	$(ZIP_SITE)
	@echo "The book: $(abspath $(BUILD))/html/index.html (offline, anywhere: $(abspath $(SITE_ZIP)))"

# make test executes every chapter afresh (no cache), failing on any error or Sphinx warning.
book-test: $(STAMP)
	mkdir -p $(BUILD)
	$(WRITE_CONFIG) "$(CACHE_DIR)" force $(BUILD)/_config.test.yml "$(CELL_TIMEOUT)"
	set -o pipefail; $(BIN)/jupyter-book build . --path-output $(BOOK_OUT) \
	  --config $(BUILD)/_config.test.yml --all -W -n --keep-going 2>&1 | tee $(BUILD)/book.log \
	  || { $(BIN)/python -c "$$EXPLAIN_FAILURE" $(BUILD)/book.log; exit 1; }
	$(ZIP_SITE)

# The zip of an already built site (make book does this itself).
site-zip: $(STAMP)
	$(ZIP_SITE)

# The chapters are linted from their .ipynb twins (notebooks/ruff.toml: 88 columns); the tests
# check the .md sources the same way.
LINTED := src tests benchmarks gpu book/_ext book/api

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED) notebooks
	$(BIN)/ruff format --check $(LINTED) notebooks

# Chapters: sync .md -> .ipynb, format and fix the notebooks, then write the .md back.
format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/jupytext --to ipynb --update notebooks/*.md
	$(BIN)/ruff format notebooks/*.ipynb
	$(BIN)/ruff check --fix --exit-zero notebooks/*.ipynb
	$(BIN)/jupytext --to md:myst notebooks/*.ipynb

sync: $(STAMP)
	$(BIN)/jupytext --to ipynb --update notebooks/*.md

# Then the whole suite again on PyTorch's portable CPU kernels (ATEN_CPU_CAPABILITY=default rather
# than this CPU's AVX2/AVX-512 ones): floats that round differently there catch bitwise comparisons
# of two differently written computations. The book's HTML tests skip in that pass (no new HTML).
SECOND_KERNEL_PATH ?= default
CPU_KERNELS = $(BIN)/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())"
# make test runs, and fails at the first stage that fails:
#   1. make fast: lint and the fast tests (under a minute; the library and the chapters' sources);
#   2. the book, every chapter executed afresh, warnings as errors (book-test);
#   3. the slow tests (Colab-style chapter runs, environments) and the built book's (HTML, browser);
#   4. the whole suite again on PyTorch's portable CPU kernels (the built book's tests skip there).
test: fast book-test
	DIFFUSION_LESSONS_BOOK_HTML=$(abspath $(BUILD))/html $(BIN)/python -m pytest -ra --durations=10 \
	  -m "slow or built_book" tests
	@echo "Second pass: PyTorch CPU kernels $$($(CPU_KERNELS)) -> \
	$$(ATEN_CPU_CAPABILITY=$(SECOND_KERNEL_PATH) $(CPU_KERNELS))"
	ATEN_CPU_CAPABILITY=$(SECOND_KERNEL_PATH) $(BIN)/python -m pytest -ra --durations=10 tests

# The fast job: lint, then every test that needs neither a built book nor minutes (make test runs
# it first, so a broken library fails in about a minute, before the book is built).
fast: lint
	@start=$$(date +%s); $(BIN)/python -m pytest -q -ra --durations=5 -m "not slow and not built_book" tests; \
	  rc=$$?; echo "fast tests took $$(( $$(date +%s) - start )) s"; exit $$rc

test-lib: fast

# book/api/: one page per module, from the package maps (run after adding or moving a module).
api-pages: $(STAMP)
	$(BIN)/python book/api/write_pages.py

clean:
	rm -rf $(BUILD)

clean-cache:
	rm -rf $(CACHE_ROOT)
