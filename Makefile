# The two commands of the README: `make run` (install, then serve the shipped models and the demo)
# and `make test` (install, then lint and run the whole test suite). Both install what is missing.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_PORT ?= 7860
# Debian packages the tests need: Chromium drives the demo in a real browser, redis-server is the
# broker of the scale-out tests, docker-compose validates deployment/compose.yaml, nginx runs
# deployment/nginx/fhe-server.conf in front of a real server, prometheus brings promtool, which
# checks and unit-tests deployment/monitoring's alert rules, postgresql is the shared state of the
# many-replica tests (started by the tests in a temporary directory, never as a system service).
# podman and mmdebstrap build the images and run the compose stack of `make image-test`.
SYSTEM_PACKAGES := chromium redis-server docker-compose nginx prometheus postgresql podman \
	mmdebstrap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install fast-install client-install server-install system-packages run test test-fast lint model tabular-models clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[client,server,build,demo,test]"
	touch $@

# fhe-client alone, into VENV (say VENV=/tmp/fhe-client; .venv-client when VENV is not given): no torch, transformers, xgboost,
# gradio, Concrete-ML or CUDA libraries, about 0.5 GB. Every package is pinned and installed
# without its declared dependencies (see requirements-client.txt for why).
CLIENT_VENV := $(if $(filter command line environment,$(origin VENV)),$(VENV),.venv-client)
client-install:
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet --upgrade pip
	$(CLIENT_VENV)/bin/pip install --quiet --no-deps -r requirements-client.txt
	rm -rf build
	$(CLIENT_VENV)/bin/pip install --quiet --no-deps .
	$(CLIENT_VENV)/bin/fhe-client --help >/dev/null
	@du -sm $(CLIENT_VENV) | awk '{print "client install: " $$1 " MB in " $$2}'

# fhe-server alone (the API and its pool or Celery workers), into VENV (.venv-server when VENV is
# not given): circuits are compiled and run with concrete.compiler, so no torch, transformers,
# Concrete-ML or CUDA libraries; under 1 GB. Every package is pinned and installed without its
# declared dependencies (see requirements-server.txt for why). Compiling a circuit needs the
# system linker `ld` (Debian: binutils).
SERVER_VENV := $(if $(filter command line environment,$(origin VENV)),$(VENV),.venv-server)
server-install:
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVER_VENV)/bin/pip install --quiet --no-deps -r requirements-server.txt
	rm -rf build
	$(SERVER_VENV)/bin/pip install --quiet --no-deps .
	$(SERVER_VENV)/bin/fhe-server --help >/dev/null
	@du -sm $(SERVER_VENV) | awk '{print "server install: " $$1 " MB in " $$2}'

# The API on $(HOST):$(PORT) and the demo page on $(HOST):$(DEMO_PORT), stopped together by Ctrl-C.
run: install
	$(BIN)/fhe-client demo --start-server --server-host $(HOST) --server-port $(PORT) \
		--host $(HOST) --port $(DEMO_PORT)

system-packages:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null && \
		command -v docker-compose >/dev/null && command -v promtool >/dev/null && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
		command -v podman >/dev/null && command -v mmdebstrap >/dev/null && \
		{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); }

# ruff and the import contract, with the tools in the bin directory $(1).
define lint-with
	$(1)/ruff check .
	$(1)/ruff format --check .
	$(1)/lint-imports --no-cache
endef

lint: install
	$(call lint-with,$(BIN))

test: lint system-packages
	$(BIN)/pytest

# The edit-test loop on a fresh clone: install, lint, and the tests marked `fast`, in under 2
# minutes: the in-process tier (every route through FastAPI's TestClient over real stores and
# small real circuits) and the tests that need nothing but the venv. It installs no Debian
# package (that takes root and apt, and minutes): the tests that run docker-compose, nginx or
# promtool, start Postgres or Redis, generate FHE keys or drive Chromium are not `fast`, and run
# in `make test` (markers `postgres`, `redis`, `browser`, `fhe` select them: pytest -m redis).
# Its venv is .venv-fast (make fast-install, about a minute from pip's cache), or .venv when
# `make install` has made it: .venv holds everything .venv-fast does.
FAST_VENV := $(if $(wildcard $(VENV)/.installed),$(VENV),.venv-fast)
test-fast: $(FAST_VENV)/.installed
	$(call lint-with,$(FAST_VENV)/bin)
	$(FAST_VENV)/bin/pytest -m fast

# The lean venv of the fast tier, about 1 GB: the server's and the client's pinned packages with
# the test tools (requirements-test-fast.txt), all installed without their declared dependencies
# like `make server-install`, and this checkout in editable mode. No torch, transformers,
# Concrete-ML, xgboost or CUDA libraries: no test marked `fast` needs the build role.
fast-install: .venv-fast/.installed

.venv-fast/.installed: pyproject.toml requirements-server.txt requirements-client.txt \
		requirements-test-fast.txt
	rm -rf .venv-fast
	$(PYTHON) -m venv .venv-fast
	.venv-fast/bin/pip install --quiet --upgrade pip
	.venv-fast/bin/pip install --quiet --no-deps -r requirements-server.txt \
		-r requirements-client.txt -r requirements-test-fast.txt
	.venv-fast/bin/pip install --quiet --no-deps -e .
	touch $@

# Rebuilds the shipped bundles from ../shared/data/twitter_airline_sentiment.csv: the default
# XGBoost circuit, then the bootstrap-free linear one on the same fine-tuned embedder, both over
# a client-side PCA of the embedding to 32 numbers; 300 test tweets each under real FHE.
model: install
	$(BIN)/python -m fhe.build.recipe --out models/sentiment --reduce-to 32 --fhe-sample 300
	$(BIN)/python -m fhe.build.recipe --out models/sentiment-linear --name sentiment-linear \
		--model-type linear --n-bits 4,6,8 --reduce-to 32 --fhe-sample 300

# Rebuilds the shipped tabular examples and their clear twins from datasets scikit-learn ships
# (no download): breast-cancer (classification) and diabetes (regression).
tabular-models: install
	$(BIN)/python -m fhe.build.tabular_recipe --out models/breast-cancer --name breast-cancer \
		--data sklearn:breast_cancer --fhe-sample 114 --clear-twin models/breast-cancer-clear \
		--description "Whether a breast mass is benign or malignant, from 30 measurements of a \
	cell nucleus image (Wisconsin diagnostic data), predicted over an encrypted row."
	$(BIN)/python -m fhe.build.tabular_recipe --out models/diabetes --name diabetes \
		--data sklearn:diabetes --task regression --fhe-sample 89 --clear-twin models/diabetes-clear \
		--description "Disease progression one year after baseline, from 10 measurements of a \
	diabetes patient (age, sex, BMI, blood pressure, six blood serum values), predicted over an \
	encrypted row."

clean:
	rm -rf $(VENV) .venv-fast .cache test-artifacts

# Container images by role (make base-image, make images, make image-test): deployment/images.mk.
include deployment/images.mk
