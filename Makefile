# adapterd: `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + git).
PROFILE ?= cpu
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is keyed on everything that decides what gets installed: a second `make setup`
# with unchanged inputs does nothing, in seconds, without the network.
SETUP_KEY := $(shell cat constraints/$(PROFILE).txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
STAMP := $(VENV)/.setup-$(PROFILE)-$(SETUP_KEY)
PROTOS := $(wildcard protos/adapterd/v1/*.proto)
GENERATED := adapterd/v1/server_pb2.py

.PHONY: setup protos test lint demo clean
setup: $(STAMP) $(GENERATED)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PYTHON=$(PY) scripts/setup.sh --profile $(PROFILE) --dev --editable
	@rm -f $(VENV)/.setup-* && touch $@

$(GENERATED): $(PROTOS) | $(STAMP)
	PYTHON=$(PY) scripts/gen_protos.sh

protos:
	PYTHON=$(PY) scripts/gen_protos.sh

test: setup
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check service trainer eval tests bench
	$(VENV)/bin/ruff format --check service trainer eval tests bench
	$(VENV)/bin/mypy

# The demo prints its own run time at the end; setup's is printed first, on its own.
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory setup \
		&& echo "[demo] setup took $$(( $$(date +%s) - start )) s"
	$(VENV)/bin/adapterd demo

clean:
	rm -rf $(VENV) adapterd/v1/*_pb2*.py adapterd/v1/*_pb2*.pyi
