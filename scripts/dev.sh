#!/usr/bin/env bash
# Run the assistant locally: the one command for a fresh machine.
#
#   scripts/dev.sh            # then, in another terminal: scripts/smoke.sh http://127.0.0.1:1956
#
# 1. Creates .venv and installs requirements-dev.txt when they changed
#    (scripts/venv.sh).
# 2. Starts the Firestore emulator (scripts/firestore-emulator.sh) and points
#    the service at it with FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT
#    (default demo-local).
# 3. Only with AUTH_MODE=firebase: starts the Firebase Auth emulator
#    (scripts/auth-emulator.sh, which needs Node.js 20+ and installs
#    firebase-tools into node_modules), exports FIREBASE_AUTH_EMULATOR_HOST
#    and FIREBASE_PROJECT_ID (= GOOGLE_CLOUD_PROJECT, which must then start
#    with demo-), creates the user dev@example.com (password dev-password) and
#    prints the curl commands that get its ID token and stream with it.
#    Without AUTH_MODE, or with none / iam, Node is not needed.
# 4. If the service would have no provider (none of ANTHROPIC_API_KEY,
#    OPENAI_API_KEY, GEMINI_API_KEY, or the variables {P}_KEY_NAME names
#    instead, holds a key, no OLLAMA_BASE_URL, no SECRET_MANAGER=true: the
#    service's own settings decide, devtools/has_provider.py), starts the
#    fake upstream (devtools.fake_upstream)
#    and routes the anthropic provider to it: replies are canned text.
# 5. Serves the function on http://127.0.0.1:$PORT (default 1956) with
#    THREADS (default 16) gunicorn threads.
# 6. Serves the demo page of the reference client (devtools/demo/, which uses
#    clients/js/vac-stream.js) on http://127.0.0.1:$DEMO_PORT (default 1958):
#    its own port, so it calls the service cross-origin like a real frontend.
#
# Ctrl-C (or SIGTERM/SIGHUP to this script) stops the server, the fake
# upstream and the emulators this script started. The server runs as a
# background child that this script waits on, rather than in the foreground:
# bash defers traps until a foreground child exits, so a SIGTERM sent to this
# script alone would otherwise leave everything running.
#
# Env: PORT (1956), THREADS (16), GOOGLE_CLOUD_PROJECT (demo-local),
#      FIRESTORE_EMULATOR_PORT (8686), FAKE_UPSTREAM_PORT (1957), AUTH_MODE,
#      AUTH_EMULATOR_PORT (9099, with AUTH_MODE=firebase), DEMO_PORT (1958),
#      and any setting
#      the service reads (see README).
set -euo pipefail

cd "$(dirname "$0")/.."

PORT="${PORT:-1956}"
THREADS="${THREADS:-16}"
FAKE_UPSTREAM_PORT="${FAKE_UPSTREAM_PORT:-1957}"
FIRESTORE_EMULATOR_PORT="${FIRESTORE_EMULATOR_PORT:-8686}"
DEMO_PORT="${DEMO_PORT:-1958}"
RUN_DIR=.run
VENV=.venv

say() { echo "dev: $*" >&2; }
die() { say "$*"; exit 1; }

for name in PORT THREADS FAKE_UPSTREAM_PORT FIRESTORE_EMULATOR_PORT DEMO_PORT; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a number, got '${!name}'"
done
command -v curl >/dev/null || die "curl not found: install curl"
# ps and pgrep find the server's workers to stop them (not in slim images).
command -v pgrep >/dev/null || die "pgrep not found: install procps (Debian: apt-get install procps)"

# 0: nothing listens on the port; 1: something does.
port_free() {
    local rc=0
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null || rc=$?
    [[ $rc -eq 7 ]]
}

# True when .run/<name>.pid names a live process: another run's emulator (on another
# port), whose start then refuses and which is not this run's to stop.
named_alive() {
    local pid_file="$RUN_DIR/$1.pid"
    [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# ---------------------------------------------------------------- processes

server_pid=""
fake_pid=""
demo_pid=""
owns_emulator=0
owns_auth_emulator=0

# Stop one child: signal it, give it GRACE seconds, then SIGKILL its own
# children (gunicorn workers, looked up first) and it. gunicorn's quick
# shutdown (SIGINT) still waits for open streams to finish, and a dev server
# has no reason to: an open stream is cut after the grace period.
# shellcheck disable=SC2317  # reached only from the EXIT trap
stop_child() {
    local pid="$1" name="$2" sig="$3" grace="$4" children i
    kill -0 "$pid" 2>/dev/null || return 0
    children="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) still running after ${grace}s; killing it"
        kill_workers "$children"
        sleep 0.5
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    kill_workers "$children"  # orphaned ones, if any
}

# SIGKILL the given pids that are still functions-framework processes.
# shellcheck disable=SC2317  # reached only from the EXIT trap
kill_workers() {
    local child
    for child in $1; do
        if ps -p "$child" -o args= 2>/dev/null | grep -q functions-framework; then
            kill -KILL "$child" 2>/dev/null || true
        fi
    done
}

# shellcheck disable=SC2317  # reached only from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    set +e
    local emulator_stop="" auth_emulator_stop=""
    if ((owns_emulator)); then  # the JVM takes ~2 s to stop: overlap it with the rest
        scripts/firestore-emulator.sh stop &
        emulator_stop=$!
    fi
    if ((owns_auth_emulator)); then  # node takes ~2 s too
        scripts/auth-emulator.sh stop &
        auth_emulator_stop=$!
    fi
    [[ -n "$fake_pid" ]] && kill -TERM "$fake_pid" 2>/dev/null  # it takes ~2 s too: start now
    [[ -n "$server_pid" ]] && stop_child "$server_pid" server INT 5
    [[ -n "$fake_pid" ]] && stop_child "$fake_pid" "fake upstream" TERM 5
    [[ -n "$demo_pid" ]] && stop_child "$demo_pid" "demo page server" TERM 2
    [[ -n "$emulator_stop" ]] && wait "$emulator_stop"
    [[ -n "$auth_emulator_stop" ]] && wait "$auth_emulator_stop"
    say "stopped"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- venv

scripts/venv.sh

port_free "$PORT" || die "port $PORT is already in use (is another dev.sh running? a second one beside it needs its own PORT and DEMO_PORT; left as they are, FIRESTORE_EMULATOR_PORT and FAKE_UPSTREAM_PORT are the first one's, shared, and stopped when the first one stops: a FAKE_UPSTREAM_PORT of its own runs it apart; the Firestore and Auth emulators are one per checkout, shared, so a second checkout runs them apart)"
mkdir -p "$RUN_DIR"

# ---------------------------------------------------------------- Firestore emulator

export FIRESTORE_EMULATOR_PORT
if port_free "$FIRESTORE_EMULATOR_PORT" && ! named_alive firestore-emulator; then
    owns_emulator=1  # set before starting, so a Ctrl-C during startup still stops it
fi
emulator_line="$(scripts/firestore-emulator.sh start)"
export FIRESTORE_EMULATOR_HOST="${emulator_line#export FIRESTORE_EMULATOR_HOST=}"
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-demo-local}"

# ---------------------------------------------------------------- Auth emulator (AUTH_MODE=firebase)

auth_mode="${AUTH_MODE:-}"
auth_mode="${auth_mode,,}"
if [[ "$auth_mode" == firebase ]]; then
    AUTH_EMULATOR_PORT="${AUTH_EMULATOR_PORT:-9099}"
    [[ "$AUTH_EMULATOR_PORT" =~ ^[0-9]+$ ]] || die "AUTH_EMULATOR_PORT must be a number, got '$AUTH_EMULATOR_PORT'"
    export AUTH_EMULATOR_PORT
    if port_free "$AUTH_EMULATOR_PORT" && ! named_alive auth-emulator; then
        owns_auth_emulator=1  # set before starting, so a Ctrl-C during startup still stops it
    fi
    auth_emulator_line="$(scripts/auth-emulator.sh start)"
    export FIREBASE_AUTH_EMULATOR_HOST="${auth_emulator_line#export FIREBASE_AUTH_EMULATOR_HOST=}"
    export FIREBASE_PROJECT_ID="$GOOGLE_CLOUD_PROJECT"
    auth_url="http://$FIREBASE_AUTH_EMULATOR_HOST/identitytoolkit.googleapis.com/v1/accounts"
    dev_user='{"email":"dev@example.com","password":"dev-password","returnSecureToken":true}'
    sign_up="$(curl -s --max-time 10 "$auth_url:signUp?key=any" -H 'Content-Type: application/json' -d "$dev_user")" \
        || die "the Auth emulator at $FIREBASE_AUTH_EMULATOR_HOST did not answer the sign-up of dev@example.com"
    if [[ "$sign_up" == *'"idToken"'* ]]; then
        say "created user dev@example.com in the Auth emulator"
    elif [[ "$sign_up" != *EMAIL_EXISTS* ]]; then
        die "the Auth emulator refused to create dev@example.com: $sign_up"
    fi
fi

# ---------------------------------------------------------------- fake upstream

# The service's own settings say whether it has a provider (devtools/has_provider.py:
# a key in the variable {P}_KEY_NAME names, one a header can carry, an Ollama URL,
# ASSISTANT_PROVIDERS, Secret Manager): looking at {P}_API_KEY alone, a renamed key
# was sent to the fake.
has_provider=0
"$VENV/bin/python" -m devtools.has_provider || has_provider=$?
((has_provider == 0 || has_provider == 3)) || die "could not tell whether a provider is configured (devtools/has_provider.py failed)"
if ((has_provider == 3)); then
    fake_url="http://127.0.0.1:$FAKE_UPSTREAM_PORT"
    if curl -sf -o /dev/null --max-time 2 "$fake_url/_fake/health"; then
        say "a fake upstream already answers at $fake_url; reusing it"
    else
        port_free "$FAKE_UPSTREAM_PORT" \
            || die "port $FAKE_UPSTREAM_PORT is in use by something that is not the fake upstream (set FAKE_UPSTREAM_PORT)"
        "$VENV/bin/python" -m devtools.fake_upstream --port "$FAKE_UPSTREAM_PORT" --echo \
            --ttft 0.3 --interval 0.04 --thinking "Reading the question. |Planning a short answer." \
            </dev/null >"$RUN_DIR/fake-upstream-$FAKE_UPSTREAM_PORT.log" 2>&1 &
        fake_pid=$!
        deadline=$((SECONDS + 15))
        until curl -sf -o /dev/null --max-time 2 "$fake_url/_fake/health"; do
            kill -0 "$fake_pid" 2>/dev/null || die "fake upstream exited during startup; see $RUN_DIR/fake-upstream-$FAKE_UPSTREAM_PORT.log"
            ((SECONDS < deadline)) || die "fake upstream did not answer at $fake_url within 15s; see $RUN_DIR/fake-upstream-$FAKE_UPSTREAM_PORT.log"
            sleep 0.1
        done
    fi
    export ANTHROPIC_BASE_URL="$fake_url"
    export ANTHROPIC_API_KEY=fake-local-key ANTHROPIC_KEY_NAME=ANTHROPIC_API_KEY
    export ASSISTANT_PROVIDERS=anthropic
    echo
    echo "NO PROVIDER KEY SET: replies come from the fake upstream at $fake_url (canned text, not a real model)"
    echo "  (set ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY or OLLAMA_BASE_URL to use a real one; fake log: $RUN_DIR/fake-upstream-$FAKE_UPSTREAM_PORT.log)"
fi

# ---------------------------------------------------------------- demo page

demo_url=""
if port_free "$DEMO_PORT"; then
    "$VENV/bin/python" -m devtools.demo --port "$DEMO_PORT" </dev/null >"$RUN_DIR/demo-$DEMO_PORT.log" 2>&1 &
    demo_pid=$!
    demo_url="http://127.0.0.1:$DEMO_PORT/"
    [[ "$PORT" == 1956 ]] || demo_url+="?service=http://127.0.0.1:$PORT/vac/assistant/demo/sse"
else
    say "port $DEMO_PORT is in use: the demo page is not served (set DEMO_PORT to use another)"
fi

# ---------------------------------------------------------------- server

export THREADS
url="http://127.0.0.1:$PORT"
cat <<EOF

Assistant on $url  (Firestore emulator $FIRESTORE_EMULATOR_HOST, project $GOOGLE_CLOUD_PROJECT, THREADS=$THREADS)
EOF
if [[ "$auth_mode" == firebase ]]; then
    cat <<EOF
AUTH_MODE=firebase: Auth emulator $FIREBASE_AUTH_EMULATOR_HOST, user dev@example.com / dev-password
  TOKEN="\$(curl -s '$auth_url:signInWithPassword?key=any' -H 'Content-Type: application/json' -d '$dev_user' | sed -n 's/.*"idToken": *"\([^"]*\)".*/\1/p')"
  curl -N -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"user_input":"Hello there"}' $url/vac/assistant/demo/sse
  AUTH_TOKEN="\$TOKEN" scripts/smoke.sh $url
EOF
else
    cat <<EOF
  curl -N -H 'Content-Type: application/json' -d '{"user_input":"Hello there"}' $url/vac/assistant/demo/sse
  scripts/smoke.sh $url
EOF
fi
[[ -z "$demo_url" ]] || echo "Demo page (the reference client in a browser): $demo_url"
cat <<EOF
Ctrl-C stops everything.

EOF

"$VENV/bin/functions-framework" --target=assistant --source=main.py --host=127.0.0.1 --port="$PORT" &
server_pid=$!

deadline=$((SECONDS + 30))
until curl -sf -o /dev/null --max-time 2 "$url/health"; do
    kill -0 "$server_pid" 2>/dev/null || break
    if ((SECONDS >= deadline)); then
        say "server not answering $url/health after 30s; still waiting on it"
        break
    fi
    sleep 0.2
done
if kill -0 "$server_pid" 2>/dev/null && curl -sf -o /dev/null --max-time 2 "$url/health"; then
    say "ready: $url"
fi

status=0
wait "$server_pid" || status=$?
server_pid=""
say "server exited with status $status"
exit "$status"
