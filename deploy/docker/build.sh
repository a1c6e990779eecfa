#!/bin/sh
# Build steps of the container image. The Dockerfile runs them, and tests/test_container_build.py runs the
# very same script in a fresh virtual environment, so what the image does is what the test exercised.
#
#   build.sh package SRC VENV              generate the protobuf stubs (and ship the .proto beside them),
#                                          build the project wheel (the Cython/C extensions compiled by gcc)
#                                          and install it with its dependencies into a new virtual
#                                          environment VENV; the wheel stays in VENV/../wheels
#   build.sh model MODEL_ID REGISTRY OUT   compile MODEL_ID of REGISTRY into OUT (skipped when MODEL_ID is
#                                          empty), then strip from REGISTRY what serving does not read
#                                          (labelled test rows, staging folder, lock file)
set -eu

package() {
    src=$1
    venv=$2
    wheels=$(dirname "$venv")/wheels
    python3 -m venv "$venv"
    "$venv/bin/pip" install "grpcio-tools>=1.70"
    "$venv/bin/python" -m grpc_tools.protoc -I"$src/proto" --python_out="$src/control/proto_gen" \
        "$src/proto/fraud_detection.proto"
    cp "$src/proto/fraud_detection.proto" "$src/control/proto_gen/"
    "$venv/bin/pip" wheel --no-deps --wheel-dir "$wheels" "$src"
    "$venv/bin/pip" install "$wheels"/voxguard_ml_pipeline-*.whl
    "$venv/bin/python" -c "import ml_pipeline.native.compiled_model, ml_pipeline.native.serving_core, \
ml_pipeline.proto_gen.fraud_detection_pb2, ml_pipeline.inference_server"
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
