#!/usr/bin/env bash
# Install the Node tools of package.json (firebase-tools, for the Auth
# emulator) into ./node_modules with `npm ci`, only when package-lock.json
# changed since the last install (a hash is kept in
# node_modules/.package-lock.sha256). Never installs globally; install scripts
# are not run (the emulator does not need them). Used by auth-emulator.sh;
# only local runs and tests need it, nothing here is deployed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULES=node_modules
STAMP="$MODULES/.package-lock.sha256"
FIREBASE="$MODULES/.bin/firebase"

say() { echo "node-tools: $*" >&2; }
die() { say "$*"; exit 1; }

command -v node >/dev/null || die "node not found: install Node.js 20+"
command -v npm >/dev/null || die "npm not found: install Node.js 20+ (with npm)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
    || die "node is $(node -v 2>&1); Node.js 20 or newer is needed"
[[ -f package-lock.json ]] || die "package-lock.json missing: it is part of the project, restore it from git"

want_hash="$(cat package.json package-lock.json | sha256sum)"
want_hash="${want_hash%% *}"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_hash" || ! -x "$FIREBASE" ]]; then
    say "installing package-lock.json into $MODULES (npm ci; about 300 MB, a few minutes the first time)"
    npm ci --ignore-scripts --no-audit --no-fund >&2 \
        || die "npm ci failed (see the messages above)"
    echo "$want_hash" >"$STAMP"
fi
[[ -x "$FIREBASE" ]] || die "$FIREBASE missing after npm ci: delete $MODULES and run again"
