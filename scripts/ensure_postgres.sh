#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 with trust auth for local test connections:
# start the installed cluster if it is down, install Debian's package if PostgreSQL is absent.
# Exits non-zero (with the reason) if the server still cannot be reached: tests that need it must run.
set -euo pipefail

HOST=127.0.0.1
PORT=5432

ready() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }

if command -v pg_isready >/dev/null 2>&1 && ready; then
  echo "postgres: already running on $HOST:$PORT"
  exit 0
fi

if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "postgres: not installed; install PostgreSQL (apt-get install postgresql) or set VOXGUARD_TEST_DSN" >&2
    exit 1
  fi
  echo "postgres: installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  # Tests connect as postgres over TCP without a password, as on the development machines.
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
  done
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
echo "postgres: starting cluster $version/main"
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true

for _ in $(seq 1 30); do
  if ready; then
    echo "postgres: ready on $HOST:$PORT"
    exit 0
  fi
  sleep 1
done
echo "postgres: not reachable on $HOST:$PORT after 30 s" >&2
exit 1
