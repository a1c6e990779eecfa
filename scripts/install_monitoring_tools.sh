#!/usr/bin/env bash
# Install Debian's `prometheus` package, which ships the `prometheus` server and `promtool`: the tests
# check the metrics exposition and the alert rules with promtool and scrape a running server with Prometheus.
# As root: apt-get install when missing (without starting the packaged service). Otherwise: say what to install
# and exit 0, because the project builds and serves without them (only those tests are skipped).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  echo "monitoring tools: present ($(promtool --version 2>&1 | head -n 1))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "monitoring tools: not a Debian system; install Prometheus (prometheus and promtool on PATH) to run" \
    "the monitoring tests" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "monitoring tools: missing; run: sudo apt-get install -y --no-install-recommends prometheus" >&2
  exit 0
fi

echo "monitoring tools: installing prometheus (server and promtool)"
export DEBIAN_FRONTEND=noninteractive
# The package's post-install would start its own service; policy-rc.d answers "not now" (101) during install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap 'if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "monitoring tools: installed ($(promtool --version 2>&1 | head -n 1))"
