#!/usr/bin/env bash
# Start or stop the Cloud Firestore emulator for local runs and tests.
#
#   scripts/firestore-emulator.sh start   # prints: export FIRESTORE_EMULATOR_HOST=127.0.0.1:PORT
#   scripts/firestore-emulator.sh stop
#   eval "$(scripts/firestore-emulator.sh start)"
#
# Env: FIRESTORE_EMULATOR_PORT (default 8686).
#
# The emulator jar is run with java directly (not `gcloud emulators firestore
# start`, whose wrapper does not hand over the Java process), so the pid in
# .run/firestore-emulator.pid is the server's own and `stop` really stops it.
# If something already answers on the port, `start` says so on stderr and
# reuses it without writing a pid file, so `stop` leaves it alone.
# Only the export line goes to stdout; every message goes to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."

PORT="${FIRESTORE_EMULATOR_PORT:-8686}"
RUN_DIR=.run
PID_FILE="$RUN_DIR/firestore-emulator.pid"
LOG_FILE="$RUN_DIR/firestore-emulator.log"
READY_SECONDS=30
MAIN_CLASS=com.google.cloud.datastore.emulator.firestore.CloudFirestore
MATCH="$MAIN_CLASS"
READY_BODY='Ok*'
NAME="the Firestore emulator"

say() { echo "firestore-emulator: $*" >&2; }
die() { say "$*"; exit 1; }

usage() { die "usage: $0 start|stop"; }

# shellcheck source=scripts/lib/daemon.sh
. scripts/lib/daemon.sh

start() {
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "FIRESTORE_EMULATOR_PORT must be a port number, got '$PORT'"
    command -v curl >/dev/null || die "curl not found: install curl"

    local state=0
    probe || state=$?
    if [[ $state -eq 0 ]]; then
        say "an emulator already answers on 127.0.0.1:$PORT; reusing it"
        echo "export FIRESTORE_EMULATOR_HOST=127.0.0.1:$PORT"
        return 0
    elif [[ $state -eq 2 ]]; then
        die "port $PORT is in use by something that is not the Firestore emulator (set FIRESTORE_EMULATOR_PORT)"
    fi

    command -v java >/dev/null || die "java not found: install a Java 11+ runtime (e.g. openjdk-17-jre-headless)"
    command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"
    local sdk_root jar
    sdk_root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)" || true
    [[ -n "$sdk_root" ]] || die "gcloud did not report its SDK root (gcloud info failed)"
    jar="$sdk_root/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
    [[ -f "$jar" ]] || die "emulator jar missing at $jar: run 'gcloud components install cloud-firestore-emulator' (or apt-get install google-cloud-cli-firestore-emulator)"

    local args=(start --host=127.0.0.1 "--port=$PORT")
    if [[ -f firestore.rules ]]; then
        args+=(--rules=firestore.rules)
    fi

    launch java -Duser.language=en -cp "$jar" "$MAIN_CLASS" "${args[@]}"
    echo "export FIRESTORE_EMULATOR_HOST=127.0.0.1:$PORT"
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
