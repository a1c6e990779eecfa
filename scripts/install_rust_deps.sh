#!/usr/bin/env bash
# Install what clients/rust builds from offline: Debian's Rust crates (librust-*-dev, unpacked under
# /usr/share/cargo/registry, which clients/rust/.cargo/config.toml uses in place of crates.io), protoc for
# prost-build, and Debian's cargo when no cargo is on PATH.
# As root: apt-get install when missing. Otherwise: say what to install and exit 0 (only the Rust client
# and its test need them; the test skips outside CI, fails in CI).
set -euo pipefail

PACKAGES=(librust-h2-dev librust-http-dev librust-bytes-dev librust-prost-dev librust-prost-build-dev
  librust-tokio-dev librust-tokio-rustls-dev librust-rustls-pemfile-dev protobuf-compiler)
if ! command -v cargo >/dev/null 2>&1; then
  PACKAGES+=(cargo)
fi

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "rust client: packages present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "rust client: not a Debian system; build clients/rust against crates.io instead (see its README)" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "rust client: missing ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 0
fi

echo "rust client: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "rust client: installed ${missing[*]}"
