# The commands people type. Every target installs the project first (into .venv).
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NATIVE  := $(wildcard native/*.pyx native/*.pxd native/*.c native/*.h native/*.cc)
MODEL   ?=
REGISTRY ?= $(or $(ML_MODEL_REGISTRY_PATH),models/registry)
# OpenMP threads (XGBoost) sleep instead of spinning while idle: on a shared 2-core machine spinning
# threads made training 10x slower. Override by exporting OMP_WAIT_POLICY yourself.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install build test lint demo bench compile-model proto clean

install: native-deps monitoring-tools $(STAMP) build

# Prometheus and promtool (Debian's prometheus package) for the monitoring checks; as root, else a hint.
.PHONY: monitoring-tools
monitoring-tools:
	@scripts/install_monitoring_tools.sh

# Debian's gRPC C++ packages for the native transport: installed when missing and run as root, else the script
# says what to install (the project still builds and serves with grpcio). build/grpc-version changes when they
# appear or change, so the extensions are rebuilt with (or without) the native transport.
.PHONY: native-deps
native-deps:
	@scripts/install_native_deps.sh
	@mkdir -p build; v="$$(pkg-config --modversion grpc++ 2>/dev/null || echo absent)"; \
	  [ "$$(cat build/grpc-version 2>/dev/null)" = "$$v" ] || echo "$$v" > build/grpc-version

build/grpc-version: native-deps

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Rebuild the Cython/C extensions in place when a native source changes.
build: $(STAMP) control/native/.built control/proto_gen/fraud_detection_pb2.py

# Python messages of the wire contract, and the .proto itself (package data, for clients).
control/proto_gen/fraud_detection_pb2.py: proto/fraud_detection.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=control/proto_gen $<
	cp $< control/proto_gen/

# The Node.js client of the end-to-end tests (@grpc/grpc-js); the tests run `make node-client` themselves.
.PHONY: node-client
node-client: tests/node_client/node_modules/.package-lock.json

tests/node_client/node_modules/.package-lock.json: tests/node_client/package.json tests/node_client/package-lock.json
	npm ci --prefix tests/node_client --no-audit --no-fund --loglevel=error

control/native/.built: $(NATIVE) setup.py native/grpc_build.py proto/fraud_detection.proto build/grpc-version
	$(PY) setup.py --quiet build_ext --inplace -j 2
	@touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check control tests bench
	$(VENV)/bin/ruff format --check control tests bench

demo: install
	$(PY) -m ml_pipeline.demo

bench: install
	$(PY) -m pytest bench -q --benchmark-enable -p no:cacheprovider

compile-model: install
	$(VENV)/bin/ml-pipeline compile $(if $(MODEL),$(MODEL),--default) --registry $(REGISTRY)

clean:
	rm -rf build control/native/*.so control/native/.built compiled_models/*.so demo_output
