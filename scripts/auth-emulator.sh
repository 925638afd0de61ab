#!/usr/bin/env bash
# Start or stop the Firebase Auth emulator for local runs (AUTH_MODE=firebase).
#
#   scripts/auth-emulator.sh start   # prints: export FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:PORT
#   scripts/auth-emulator.sh stop
#   eval "$(scripts/auth-emulator.sh start)"
#
# Env: AUTH_EMULATOR_PORT (default 9099), GOOGLE_CLOUD_PROJECT (default
# demo-local; it must start with demo-, which is what keeps the emulator
# offline: no real project is looked up or touched).
#
# firebase-tools comes from package.json, installed into node_modules by
# scripts/node-tools.sh (never globally). Its config is written to
# .run/firebase.json, with the hub and logging ports it also opens taken from
# the first free ports after the Auth port (left to itself it takes 4400 and
# 4500, which two runs would fight over); its debug log goes to
# .run/auth-emulator-debug.log. node_modules/.bin/firebase is a node script
# run directly, so the pid in .run/auth-emulator.pid is node's own and `stop`
# really stops it. If an Auth emulator already answers on the port, `start`
# says so on stderr and reuses it without writing a pid file, so `stop`
# leaves it alone. Only the export line goes to stdout; every message goes to
# stderr.
set -euo pipefail

cd "$(dirname "$0")/.."

PORT="${AUTH_EMULATOR_PORT:-9099}"
PROJECT="${GOOGLE_CLOUD_PROJECT:-demo-local}"
RUN_DIR=.run
PID_FILE="$RUN_DIR/auth-emulator.pid"
LOG_FILE="$RUN_DIR/auth-emulator.log"
DEBUG_LOG="$RUN_DIR/auth-emulator-debug.log"
CONFIG="$RUN_DIR/firebase.json"
FIREBASE=node_modules/.bin/firebase
READY_SECONDS=90
MATCH="emulators:start --only auth"
READY_BODY='*"authEmulator"*'
NAME="the Auth emulator"

say() { echo "auth-emulator: $*" >&2; }
die() { say "$*"; exit 1; }

usage() { die "usage: $0 start|stop"; }

# shellcheck source=scripts/lib/daemon.sh
. scripts/lib/daemon.sh

# 0 when nothing listens on 127.0.0.1:$1.
port_free() {
    local rc=0
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null || rc=$?
    [[ $rc -eq 7 ]]
}

# The first free port after $1 that is not $2.
free_port_after() {
    local port
    for ((port = $1 + 1; port <= $1 + 100 && port <= 65535; port++)); do
        [[ "$port" != "${2:-}" ]] && port_free "$port" && echo "$port" && return 0
    done
    return 1
}

start() {
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "AUTH_EMULATOR_PORT must be a port number, got '$PORT'"
    [[ "$PROJECT" == demo-* ]] \
        || die "GOOGLE_CLOUD_PROJECT is '$PROJECT': the Auth emulator runs only with a demo-* project id (that keeps it offline)"
    command -v curl >/dev/null || die "curl not found: install curl"

    local state=0
    probe || state=$?
    if [[ $state -eq 0 ]]; then
        say "an Auth emulator already answers on 127.0.0.1:$PORT; reusing it"
        echo "export FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:$PORT"
        return 0
    elif [[ $state -eq 2 ]]; then
        die "port $PORT is in use by something that is not the Auth emulator (set AUTH_EMULATOR_PORT)"
    fi

    scripts/node-tools.sh
    mkdir -p "$RUN_DIR"

    local hub_port logging_port
    hub_port="$(free_port_after "$PORT")" || die "no free port in $((PORT + 1))-$((PORT + 100)) for the emulator hub"
    logging_port="$(free_port_after "$hub_port" "$PORT")" \
        || die "no free port in $((hub_port + 1))-$((hub_port + 100)) for the emulator logging"
    cat >"$CONFIG" <<EOF
{
  "emulators": {
    "auth": {"host": "127.0.0.1", "port": $PORT},
    "hub": {"host": "127.0.0.1", "port": $hub_port},
    "logging": {"host": "127.0.0.1", "port": $logging_port},
    "ui": {"enabled": false},
    "singleProjectMode": true
  }
}
EOF

    say "project $PROJECT, hub port $hub_port, logging port $logging_port"
    FIREBASE_DEBUG_PATH="$DEBUG_LOG" launch \
        "$FIREBASE" emulators:start --only auth --project "$PROJECT" --config "$CONFIG"
    echo "export FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:$PORT"
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
