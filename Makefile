# The commands people type. Every target installs the project first (into .venv).
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NATIVE  := $(wildcard native/*/*.c native/*/*.h native/*/*.cc native/include/voxguard/*.h \
             control/ml_pipeline/native/*.pyx control/ml_pipeline/native/*.pxd)
CYTHON_SOURCES := $(wildcard control/ml_pipeline/native/*.pyx control/ml_pipeline/native/*.pxd)
C_SOURCES := $(wildcard native/*/*.c native/*/*.h native/*/*.cc native/include/voxguard/*.h bench/*.cc)
MODEL   ?=
REGISTRY ?= $(or $(ML_MODEL_REGISTRY_PATH),models/registry)
# OpenMP threads (XGBoost) sleep instead of spinning while idle: on a shared 2-core machine spinning
# threads made training 10x slower. Override by exporting OMP_WAIT_POLICY yourself.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install build check test lint demo bench compile-model clean

install: native-deps monitoring-tools container-tools rust-deps $(STAMP) build

# Debian's Docker engine and debootstrap, for the test that builds and runs the images; as root, else a hint.
.PHONY: container-tools
container-tools:
	@scripts/install_container_tools.sh

# Debian's Rust crates (and protoc, and cargo when absent) that clients/rust builds from offline.
.PHONY: rust-deps
rust-deps:
	@scripts/install_rust_deps.sh

# The Rust client (clients/rust): its unit tests, then the library and the voxguard-score CLI, offline from
# Debian's crates. Output under RUST_TARGET_DIR (kept between runs); tests/test_rust_client.py runs this itself.
RUST_TARGET_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/voxguard/rust-target
.PHONY: rust-client
rust-client: rust-deps
	cd clients/rust && CARGO_TARGET_DIR="$(RUST_TARGET_DIR)" cargo test --offline --release --lib --quiet
	cd clients/rust && CARGO_TARGET_DIR="$(RUST_TARGET_DIR)" cargo build --offline --release --quiet
	@echo "rust client: $(RUST_TARGET_DIR)/release/voxguard-score"

# tritonclient (gRPC and HTTP), the Open Inference Protocol client of Triton, in its own venv: it pins a protobuf
# older than the project's. tests/test_inference_protocol.py runs this itself.
TRITON_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/voxguard/tritonclient
.PHONY: triton-client
triton-client: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: clients/tritonclient-requirements.txt
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet -r clients/tritonclient-requirements.txt
	@touch $@

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

# Rebuild the native libraries, the Cython extensions and the Python messages in place when a source changes.
build: $(STAMP) control/ml_pipeline/native/.built

# The Node.js client of the end-to-end tests (@grpc/grpc-js); the tests run `make node-client` themselves.
.PHONY: node-client
node-client: tests/node_client/node_modules/.package-lock.json

tests/node_client/node_modules/.package-lock.json: tests/node_client/package.json tests/node_client/package-lock.json
	npm ci --prefix tests/node_client --no-audit --no-fund --loglevel=error

control/ml_pipeline/native/.built: $(NATIVE) setup.py $(wildcard proto/*.proto) build/grpc-version
	$(PY) setup.py --quiet build_ext --inplace -j 2
	@touch $@

test: install
	$(PY) -m pytest -q

# The fast gate (also the pre-commit hook): static checks and the unit tests, on an installed tree; no apt, no
# C++ build once .venv exists.
check: lint
	$(PY) -m pytest -m unit -q

# Static checks: ruff (Python), cython-lint (.pyx/.pxd), clang-format (C/C++), mypy strict (ml_pipeline).
lint: $(STAMP)
	$(VENV)/bin/ruff check control tests bench setup.py
	$(VENV)/bin/ruff format --check control tests bench setup.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint --max-line-length 120 $(CYTHON_SOURCES)
	$(VENV)/bin/clang-format --dry-run -Werror $(C_SOURCES)
	$(VENV)/bin/mypy

demo: install
	$(PY) -m ml_pipeline.demo

bench: install
	$(PY) -m pytest bench -q --benchmark-enable -p no:cacheprovider

compile-model: install
	$(VENV)/bin/ml-pipeline compile $(if $(MODEL),$(MODEL),--default) --registry $(REGISTRY)

clean:
	rm -rf build control/ml_pipeline/native/*.so control/ml_pipeline/native/.built \
	  control/ml_pipeline/proto_gen/*_pb2.py* control/ml_pipeline/proto_gen/*.proto compiled_models/*.so demo_output
