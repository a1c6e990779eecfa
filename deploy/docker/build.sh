#!/bin/sh
# Build steps of the container image. The Dockerfile runs them, and tests/test_container_build.py runs the
# very same script in a fresh virtual environment, so what the image does is what the test exercised.
#
#   build.sh package SRC VENV              build the project wheel (its build generates the protobuf
#                                          messages and compiles the native libraries and Cython extensions
#                                          with gcc) and install it with its dependencies into a new virtual
#                                          environment VENV, then slim VENV (below); the wheel stays in
#                                          VENV/../wheels
#   build.sh model MODEL_ID REGISTRY OUT   compile MODEL_ID of REGISTRY into OUT (skipped when MODEL_ID is
#                                          empty), then strip from REGISTRY what serving does not read
#                                          (labelled test rows, staging folder, lock file)
set -eu

package() {
    src=$1
    venv=$2
    wheels=$(dirname "$venv")/wheels
    python3 -m venv "$venv"
    "$venv/bin/pip" wheel --no-deps --wheel-dir "$wheels" "$src"
    "$venv/bin/pip" install "$wheels"/voxguard_ml_pipeline-*.whl
    slim "$venv"
    "$venv/bin/python" -c "import ml_pipeline.native.compiled_model, ml_pipeline.native.serving_core, \
ml_pipeline.proto_gen.fraud_detection_pb2, ml_pipeline.inference_server"
}

# What the images copy is what serving and compiling need (about 250 MB less): the third-party test suites are
# never imported, the installer has done its work (the images install nothing), and shared libraries keep
# only the symbols that dynamic linking needs (strip --strip-unneeded, as Debian packages do). The libraries
# that wheels bundle in NAME.libs/ are left alone: they were rewritten by patchelf, and stripping them again
# breaks their loading ("ELF load command address/offset not page-aligned", seen with numpy's OpenBLAS).
slim() {
    venv=$1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
    "$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools
    if command -v strip >/dev/null 2>&1; then
        find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
            -exec strip --strip-unneeded {} + 2>/dev/null || true
    fi
}

model() {
    model_id=$1
    registry=$2
    out=$3
    mkdir -p "$registry" "$out"
    if [ -n "$model_id" ]; then
        ml-pipeline compile "$model_id" --registry "$registry" --out "$out"
    fi
    find "$registry" -name '*.npz' -type f -delete
    rm -rf "$registry/.staging" "$registry/.lock"
}

command=${1:?usage: build.sh package SRC VENV | build.sh model MODEL_ID REGISTRY OUT}
shift
case $command in
    package) package "$@" ;;
    model) model "$@" ;;
    *) echo "build.sh: unknown step '$command' (package or model)" >&2; exit 2 ;;
esac
