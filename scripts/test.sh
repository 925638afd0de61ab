#!/usr/bin/env bash
# Set up (venv + pinned packages, Node tools from package-lock.json) and run
# the whole test suite: lint and type check, then pytest. The suite starts its own Firestore
# and Firebase Auth emulators. This is the README's test command and what CI
# runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# npm takes the longest on a fresh machine: let it run beside the venv install.
scripts/node-tools.sh &
node_tools=$!
scripts/venv.sh
wait "$node_tools" || { echo "test: installing the Node tools failed (see above)" >&2; exit 1; }

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Coverage of assistant/ (line and branch) is reported, not gated.
.venv/bin/python -m pytest --cov --cov-report=term "$@"
