#!/usr/bin/env bash
# Install Debian's gRPC C++ packages that the native gRPC transport is built from, when missing.
# As root: apt-get update once, then install. Otherwise: say what to install and exit 0, because the project
# still builds without them and serves with the grpcio transport.
set -euo pipefail

PACKAGES=(libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev pkg-config)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "native transport: packages present (${PACKAGES[*]})"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "native transport: not a Debian system; install the gRPC C++ library, protoc with its gRPC plugin and" \
    "pkg-config to build it (serving falls back to grpcio)" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "native transport: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" \
    "(then make build; until then the server uses the grpcio transport)" >&2
  exit 0
fi

echo "native transport: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "native transport: installed ${missing[*]}"
