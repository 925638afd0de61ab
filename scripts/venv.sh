#!/usr/bin/env bash
# Create .venv (python3) if missing and install requirements-dev.txt into it,
# only when the requirements files changed since the last install (a hash is
# kept in .venv/.requirements.sha256). Used by dev.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.requirements.sha256"

say() { echo "venv: $*" >&2; }
die() { say "$*"; exit 1; }

command -v python3 >/dev/null || die "python3 not found: install Python 3.11+"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $(python3 -V 2>&1); Python 3.11 or newer is needed"
if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "creating $VENV"
    python3 -m venv --clear "$VENV" || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
want_hash="$(cat requirements.txt requirements-dev.txt | sha256sum)"
want_hash="${want_hash%% *}"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_hash" ]]; then
    say "installing requirements-dev.txt into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt \
        || die "pip install -r requirements-dev.txt failed (see the messages above)"
    echo "$want_hash" >"$STAMP"
fi
[[ -x "$VENV/bin/functions-framework" ]] || die "$VENV/bin/functions-framework missing: delete $STAMP and run again"
