# The two commands of the README: `make run` (install, then serve the shipped models) and
# `make test` (install, then lint and run the whole test suite). Both install what is missing.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint model clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	touch $@

run: install
	$(BIN)/fhe-server serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# Rebuilds models/sentiment from ../shared/data/twitter_airline_sentiment.csv (a few minutes).
model: install
	$(BIN)/python -m fhe.recipe --out models/sentiment

clean:
	rm -rf $(VENV) .cache test-artifacts
