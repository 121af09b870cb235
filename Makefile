# The two commands the README opens with: `make train` (the main job) and `make test` (the suite).
# Each builds what it needs first: a virtual environment with miniai installed, and the Fashion-MNIST files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
ARGS ?=

.PHONY: setup data browser train lint test docs notebooks bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,docs,course]'
	touch $@

# Debian's dataset-fashion-mnist holds the four IDX files; without root or apt, miniai falls back to
# $$MINIAI_DATA or the Hugging Face hub, and says so if neither is there.
data:
	@if [ -z "$$MINIAI_DATA" ] && [ ! -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else echo "note: Fashion-MNIST not found: 'sudo apt-get install dataset-fashion-mnist', or set MINIAI_DATA"; fi; \
	fi

# Debian's chromium, for the docs site's browser test (tests/test_docs.py).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found: 'sudo apt-get install chromium' to run the docs browser test"; fi; \
	fi

train: setup
	$(VENV)/bin/miniai train $(ARGS)

# ruff, configured in pyproject.toml ([tool.ruff]): pyflakes, pycodestyle, import order, pyupgrade.
lint: setup
	$(VENV)/bin/ruff check miniai tests tools benchmarks

# Every test, two at a time (pytest-xdist; tests/conftest.py keeps the files whose tests share a costly fixture on
# one worker): the notebooks in quick mode, the docs site in Chromium, torchrun and the short runs on the real data
# included. The quick loop while editing leaves out the tests marked slow: `.venv/bin/python -m pytest -m 'not slow'`.
test: lint setup browser
	$(PY) -m pytest -q -n 2 $(ARGS)

# The docs site, offline, into _docs/ (mkdocs.yml: mkdocs-material, mkdocs-jupyter, mkdocstrings): the notebooks with
# their committed outputs, the pages in docs/, an API page and a source page per module, full-text search.
# Open _docs/index.html (search works from the file system too). `nbdev-docs` builds the Quarto version of the
# notebooks where quarto is installed; the tests do not exercise that path.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --site-dir _docs

# Re-run every notebook on the full data and save its outputs (about 30 minutes on 2 CPU cores).
notebooks: setup
	$(PY) tools/run_notebooks.py

bench: setup
	$(PY) benchmarks/bench_optimizers.py

clean:
	rm -rf $(VENV) runs _docs
