# Two commands for a fresh machine (Python 3.11+, pip, make):
#   make quickstart   set everything up and label the sample photos in samples/
#   make test         run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart setup browser test test-fast lint bench clean

quickstart: setup
	$(BIN)/imclass predict samples --top-k 3 --out samples-predictions.csv --overwrite
	@echo; echo "Predictions written to samples-predictions.csv"; \
	$(BIN)/python -c "import csv; [print(f\"{r['path']:<32} {r['label']:<24} {float(r['score']):.2f}\") for r in csv.DictReader(open('samples-predictions.csv'))]"

setup: $(STAMP)
	@$(BIN)/python -c "import imclass, pathlib, sys; sys.exit(not pathlib.Path(imclass.__file__).resolve().is_relative_to(pathlib.Path('src').resolve()))" 2>/dev/null \
	  || $(BIN)/python -m pip install --quiet --no-deps -e .

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; assert sys.version_info >= (3, 11), 'imclass needs Python 3.11+'"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Debian's Chromium for the studio's browser tests (Playwright drives it; its own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium is needed for the studio's browser tests"; exit 1; }

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup   # the inner loop (~1.5 min): everything but the tests marked slow (processes, browsers, Ray, seconds each)
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/predict.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache samples-predictions.csv
