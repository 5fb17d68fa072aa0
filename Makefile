# tierstore: install, local services, tests, demo.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tierstore-installed

.PHONY: install services test demo down status

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the editable install picks up code changes itself.
$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -m venv $(VENV) || { \
			echo "python3 -m venv failed; installing python3-venv"; rm -rf $(VENV); \
			DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv </dev/null \
				|| { apt-get update </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv </dev/null; }; \
			$(PYTHON) -m venv $(VENV); }; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

services: install
	$(BIN)/tierstore services up

# `python -m pytest` (not bin/pytest) so the repo root is on sys.path for `tests.*` helpers.
test: install services
	$(BIN)/python -m pytest -q

demo: install services
	$(BIN)/tierstore demo

status: install
	$(BIN)/tierstore services status

down: install
	$(BIN)/tierstore services down
