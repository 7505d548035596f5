# `make test` and `make serve` work from a fresh clone: the first run creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint proto serve image wheelhouse clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

# Exports the default model once (WEIGHTS=file.pdparams, else PaddleClas's download, else random), then serves.
MODEL ?= SqueezeNet1_1
WEIGHTS ?=
serve: $(STAMP)
	$(PY) -m export.default_model --model $(MODEL) --out models/$(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS))
	$(PY) pipelines/web_service.py --model_config models/$(MODEL)/serving_server

# Regenerates serving/proto/*_pb2.py from the .proto files (committed; never edit them by hand).
PROTOS := $(wildcard serving/proto/*.proto)
SERVICE_PROTOS := serving/proto/pipeline_service.proto serving/proto/general_model_service.proto \
	serving/proto/grpc_predict_v2.proto
# The Open Inference Protocol's messages are named inference.* here as in tritonclient's and kserve's modules,
# which register theirs in protobuf's default pool: ours get a pool of their own, so that a process may import
# a client of the protocol beside the server (the tests do).
OWN_POOL := serving/proto/grpc_predict_v2_pb2.py
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -I. --grpc_python_out=. $(SERVICE_PROTOS)
	$(PY) -c "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.write_text(p.read_text().replace(\
	'_descriptor_pool.Default().AddSerializedFile', '_descriptor_pool.DescriptorPool().AddSerializedFile'))" $(OWN_POOL)

# The container image (Containerfile) via deploy/image/build.py: the wheel, its wheelhouse and, unless BASE_IMAGE names
# one, a local Debian 12 base made with mmdebstrap (no registry needed); podman builds it offline. MODEL_DIR=DIR bakes
# an exported model in. `make wheelhouse` only writes the build context (build/image) for another builder.
IMAGE ?= localhost/pipeline-serving-kit:0.1.0
BASE_IMAGE ?=
IMAGE_PYTHON ?=
MODEL_DIR ?=
IMAGE_FLAGS = --tag $(IMAGE) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(IMAGE_PYTHON),--python $(IMAGE_PYTHON)) \
	$(if $(MODEL_DIR),--model-dir $(MODEL_DIR))
image: $(STAMP)
	$(PY) deploy/image/build.py $(IMAGE_FLAGS)

wheelhouse: $(STAMP)
	$(PY) deploy/image/build.py $(IMAGE_FLAGS) --context-only

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
