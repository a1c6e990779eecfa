#!/usr/bin/env bash
# Install Debian's Docker engine (docker.io: dockerd, containerd, runc and the docker client) and debootstrap:
# tests/test_container_image.py builds the images from a base made of Debian packages and runs them.
# As root: apt-get install when missing, without starting the packaged service (the test starts its own
# dockerd). Otherwise: say what to install and exit 0 (the image test skips outside CI, fails in CI).
set -euo pipefail

PACKAGES=(docker.io debootstrap)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "container tools: packages present (${PACKAGES[*]})"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "container tools: not a Debian system; install a Docker engine (dockerd) and debootstrap to run the" \
    "image test" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "container tools: missing ${missing[*]}; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 0
fi

echo "container tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The package's post-install would start the system's dockerd; policy-rc.d answers "not now" (101).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap 'if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "container tools: installed ${missing[*]}"
