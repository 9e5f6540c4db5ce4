#!/usr/bin/env bash
# The demo from a fresh machine (as root): install everything, then run the real
# agent in a lab of network namespaces and show a NetworkPolicy taking effect.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (the lab creates network namespaces)" >&2
    exit 2
fi
bash scripts/setup.sh
exec .venv/bin/kube-netpol lab demo "$@"
