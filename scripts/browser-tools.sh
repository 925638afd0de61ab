#!/usr/bin/env bash
# Make sure the browser tests have a browser: Debian's chromium at
# /usr/bin/chromium. If it is missing, install it with apt-get (root only;
# Playwright's own browser download does not work on these machines, so the
# tests drive this one through `executable_path`). Then check that it starts
# headless and prints its version. Used by test.sh; safe to run again (it
# does nothing when chromium is already there and works).
#
# Exit status 0: /usr/bin/chromium is there and runs. Otherwise a message
# that says what to do, and status 1.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=/usr/bin/chromium

say() { echo "browser-tools: $*" >&2; }
die() { say "$*"; exit 1; }

if [[ ! -x "$CHROMIUM" ]]; then
    command -v apt-get >/dev/null \
        || die "$CHROMIUM missing and no apt-get here: install Chromium at $CHROMIUM by hand (Debian/Ubuntu package 'chromium')"
    [[ "$(id -u)" == 0 ]] \
        || die "$CHROMIUM missing: run 'apt-get update && apt-get install -y chromium' as root, then run this again"
    say "installing Debian's chromium (apt-get; about 300 MB, a minute or two the first time)"
    export DEBIAN_FRONTEND=noninteractive
    log="$(mktemp -t browser-tools.XXXXXX)"
    # apt's progress goes to a log, shown only when something fails.
    apt_get() {
        apt-get "$@" >"$log" 2>&1 || { tail -n 30 "$log" >&2; return 1; }
    }
    apt_get update || die "apt-get update failed (its last lines are above): no package index, so no chromium"
    apt_get install -y --no-install-recommends chromium \
        || die "apt-get install -y chromium failed (its last lines are above)"
    rm -f "$log"
    [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM is not there"
fi

version="$("$CHROMIUM" --headless --no-sandbox --disable-gpu --version 2>/dev/null)" \
    || die "$CHROMIUM is there but does not run ('$CHROMIUM --version' failed)"
say "$version at $CHROMIUM"
