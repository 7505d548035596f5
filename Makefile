# `make test` and `make serve` work from a fresh clone: the first run creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint proto clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

# Regenerates serving/proto/*_pb2.py from the .proto files (committed; never edit them by hand).
PROTOS := $(wildcard serving/proto/*.proto)
SERVICE_PROTOS := serving/proto/pipeline_service.proto
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -I. --grpc_python_out=. $(SERVICE_PROTOS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
