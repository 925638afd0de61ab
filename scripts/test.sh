#!/usr/bin/env bash
# Set up (venv + pinned packages, Node tools from package-lock.json) and run
# the whole test suite: lint and type check, then pytest. The suite starts its own Firestore
# and Firebase Auth emulators. This is the README's test command and what CI
# runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# npm and apt take the longest on a fresh machine: let them run beside the venv install.
scripts/node-tools.sh &
node_tools=$!
scripts/browser-tools.sh &  # Debian's chromium, for tests/test_browser.py
browser_tools=$!
scripts/venv.sh
wait "$node_tools" || { echo "test: installing the Node tools failed (see above)" >&2; exit 1; }
wait "$browser_tools" || { echo "test: installing chromium failed (see above)" >&2; exit 1; }
# The browser is there now: the browser tests fail, rather than skip, if it goes missing.
export VAC_BROWSER_TESTS=required

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Coverage of assistant/ (line and branch) is reported, not gated.
.venv/bin/python -m pytest --cov --cov-report=term "$@"
