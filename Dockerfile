# VoxGuard ML pipeline images (docs/operations.md, "Building the image"):
#   docker build -t voxguard-ml-pipeline .                          the server (runtime stage, no compiler)
#   docker build --target trainer -t voxguard-ml-pipeline-trainer .  retraining: train, register, compile (gcc)
#   docker build --build-context registry=models/registry --build-arg COMPILE_MODEL=<model_id> \
#       -t voxguard-ml-pipeline:<model_id> .                       the server with that model compiled and baked in
# The build context is an allowlist (.dockerignore): sources only, never data, registries' test rows or secrets.
# The base is PYTHON_IMAGE: any Debian 12 image with python3 (venv, pip), e.g. one made with debootstrap where no
# registry is reachable (docs/operations.md; tests/test_container_image.py builds with such a base):
#   docker build --network host --build-arg PYTHON_IMAGE=voxguard-base:bookworm -t voxguard-ml-pipeline .
# No `# syntax=` line: the engine's built-in Dockerfile frontend is used, so building pulls no frontend image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# A model registry to compile from: empty unless `--build-context registry=DIR` replaces this stage.
FROM scratch AS registry

# ---- build: gcc/g++, the project wheel with its Cython/C extensions, installed into /opt/venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc/g++ for the Cython/C extensions and the compiled models; gRPC C++ (scripts/install_native_deps.sh) for the
# native transport. The base image pins the Debian release; exact package versions would break on each update.
# A base whose python3 is Debian's (PYTHON_IMAGE built from Debian packages) lacks the C headers the python
# image ships: python3-dev then, in this stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev zlib1g-dev \
        libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev pkg-config \
    && if [ ! -f "$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; then \
        apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build/src
COPY pyproject.toml setup.py README.md ./
COPY proto/ proto/
COPY native/ native/
COPY control/ control/
COPY deploy/docker/build.sh /build/build.sh
RUN --mount=type=cache,target=/root/.cache/pip sh /build/build.sh package /build/src /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# ---- model: optionally compile COMPILE_MODEL from the registry context (same paths as the mounted volume) ----
FROM build AS model
ARG COMPILE_MODEL=""
COPY --from=registry / /var/lib/voxguard/registry/
RUN sh /build/build.sh model "$COMPILE_MODEL" /var/lib/voxguard/registry /var/lib/voxguard/compiled_models

# ---- trainer: the build stage (it has gcc, which compiling a model needs) run as a non-root user ----
FROM build AS trainer
RUN groupadd --system --gid 10001 voxguard \
    && useradd --system --uid 10001 --gid voxguard --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin voxguard
ENV MPLCONFIGDIR=/tmp/matplotlib \
    ML_MODEL_REGISTRY_PATH=/var/lib/voxguard/registry
WORKDIR /var/lib/voxguard
USER 10001:10001
ENTRYPOINT ["ml-pipeline"]
CMD ["--help"]

# ---- runtime: slim, no compiler, non-root, read-only models; serves gRPC on 50051, metrics on 9091 ----
FROM ${PYTHON_IMAGE} AS runtime
# Only the shared libraries the native gRPC transport links (Debian 12: gRPC 1.51, protobuf 3.21); no compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 voxguard \
    && useradd --system --uid 10001 --gid voxguard --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin voxguard
COPY --from=build /opt/venv /opt/venv
COPY --from=model /var/lib/voxguard /var/lib/voxguard
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    ML_MODEL_REGISTRY_PATH=/var/lib/voxguard/registry \
    ML_INFERENCE_HOST=0.0.0.0 \
    ML_INFERENCE_PORT=50051 \
    ML_METRICS_PORT=9091
WORKDIR /var/lib/voxguard
USER 10001:10001
EXPOSE 50051 9091
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "ml_pipeline.inference_server.healthcheck"]
CMD ["python", "-m", "ml_pipeline.inference_server"]
