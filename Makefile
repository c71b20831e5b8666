# The README's commands. `make serve` is the quick start, `make test` what CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUNDLE ?= bundles/tiny
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve train test lint bench clean

install: $(VENV)/.installed

# torch is installed first and pinned to the CPU build (a bare `torch` requirement would pull
# a multi-GB CUDA build); recbole is installed without its dependencies, for its ml-100k files.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps recbole==1.2.1
	touch $@

$(BUNDLE)/manifest.json: | $(VENV)/.installed
	$(BIN)/genrec-train run --config tiny --out $(BUNDLE)

train: $(BUNDLE)/manifest.json

# The local quick start: writes need no token (GENREC_ALLOW_ANONYMOUS_WRITES; the service logs a
# warning). In production set API_TOKEN or API_TOKENS instead (docs/configuration.md, "Security").
serve: install $(BUNDLE)/manifest.json
	GENREC_ALLOW_ANONYMOUS_WRITES=true $(BIN)/genrec-serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check genrec training service tests benchmarks

clean:
	rm -rf $(VENV) bundles .pytest_cache
