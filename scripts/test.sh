#!/usr/bin/env bash
# The test command of the README and of CI: set up, then run every test and
# the conformance corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
SHARED_EXAMPLES=../shared/conformance/examples
[ -d "$SHARED_EXAMPLES" ] || { echo "test: $SHARED_EXAMPLES is missing (shared/ must sit beside the repository)"; exit 2; }

# The code stays linted and typed (configuration in pyproject.toml).
ruff check kube_netpol plugins tests bench scripts
mypy

LEAKS_BEFORE=$(mktemp)
python scripts/leak_check.py snapshot "$LEAKS_BEFORE"

kube-netpol conformance run "$SHARED_EXAMPLES" tests/conformance --mode offline
# The same scenarios with the real agent, nftables and NFQUEUE in the lab (root);
# it also fails if any probe's dataplane result differs from the offline one.
kube-netpol conformance run "$SHARED_EXAMPLES" tests/conformance --mode dataplane
python -m pytest -q -p no:cacheprovider tests plugins/kube-netpol-allowlist/tests

# Nothing the tests created (namespaces, tables, xt rules) may outlive them.
python scripts/leak_check.py compare "$LEAKS_BEFORE"
