#!/usr/bin/env bash
# Set up (venv + pinned packages) and run the whole test suite: lint, then pytest.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/venv.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
