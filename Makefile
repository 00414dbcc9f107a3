# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The Label Studio server lives in its own venv: it is not a dependency of the sslall package
# (which needs only the SDK, the extra sslall[labelstudio] that `.[dev]` includes), and it drags
# in Django and ~1 GB. The tests start it.
LS_VENV    := .venv-labelstudio
LS_STAMP   := $(LS_VENV)/.installed
LS_VERSION ?= 1.23.2

.PHONY: demo test lint install bench clean labelstudio browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sslall demo demo-workspace --fresh
	@echo "sslall is installed in $(VENV): run $(BIN)/sslall, or 'source $(BIN)/activate' first"

lint: $(STAMP)
	$(BIN)/ruff check sslall tests $(wildcard benchmarks)

labelstudio: $(LS_STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet 'label-studio==$(LS_VERSION)'
	touch $(LS_STAMP)

# Headless Chromium + its driver (Debian packages) for the test that looks at a task as an
# annotator does. Installed when missing and we are root (or have password-less sudo).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "chromium + chromium-driver are missing and cannot be installed without root:"; \
	  echo "  sudo apt-get install chromium chromium-driver (or set SSLALL_SKIP_BROWSER=1)"; fi

test: lint labelstudio browser
	$(BIN)/python -m pytest -q

# make bench: every benchmarks/bench_*.py at full size; BENCH="import status" or BENCH=--quick
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH)

clean:
	rm -rf demo-workspace .pytest_cache .ruff_cache
