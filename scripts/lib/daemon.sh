# shellcheck shell=bash
# Shared by the emulator scripts (firestore-emulator.sh, auth-emulator.sh):
# a background server with a pid file, started in its own session, waited
# for until it answers, and stopped only if the pid file names it.
#
# The sourcing script sets NAME (for messages), PID_FILE, LOG_FILE, PORT,
# MATCH (a fixed string its command line contains, so a recycled pid is never
# taken for it), READY_BODY (a glob its root URL's answer matches once it is
# ready), READY_SECONDS, and defines say and die.

# Without ps a server's pid could not be told from a recycled one: `stop` took
# every server for gone and left it running (ps is not in slim images).
command -v ps >/dev/null || die "ps not found: install procps (Debian: apt-get install procps)"

# 0 when the server answers READY_BODY on its root URL; 1 when nothing
# listens; 2 when something else answers there.
probe() {
    local body rc=0
    body="$(curl -s --max-time 2 "http://127.0.0.1:$PORT/" 2>/dev/null)" || rc=$?
    # shellcheck disable=SC2053  # READY_BODY is a glob on purpose
    if [[ $rc -eq 0 && "$body" == $READY_BODY ]]; then
        return 0
    elif [[ $rc -eq 7 || $rc -eq 28 ]]; then
        return 1
    else
        return 2
    fi
}

# The pid from the pid file, if that process is alive and is the server.
running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    ps -p "$pid" -o args= 2>/dev/null | grep -qF -- "$MATCH" || return 1
    echo "$pid"
}

# launch COMMAND...: start it in the background with its output in LOG_FILE,
# write its pid, and wait until probe succeeds (or die, stopping it).
#
# Its own session where available, so signals aimed at the caller's terminal
# (Ctrl-C, hang-up) do not reach it half-way; the caller stops it through the
# pid file. Without job control the child is not a group leader, so setsid
# does not fork and $! stays the server's own pid.
launch() {
    local old_pid
    if old_pid="$(running_pid)"; then
        die "$NAME from $PID_FILE (pid $old_pid) is running but does not answer on port $PORT: another run (a dev.sh, say) started it on another port; use that port, or stop that run first ('$0 stop' stops this one)"
    fi
    rm -f "$PID_FILE"
    mkdir -p "$(dirname "$PID_FILE")"
    local launcher=()
    if command -v setsid >/dev/null; then
        launcher=(setsid)
    fi
    ${launcher[@]+"${launcher[@]}"} "$@" </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    say "starting on 127.0.0.1:$PORT (pid $pid, log $LOG_FILE)"

    local deadline=$((SECONDS + READY_SECONDS))
    until probe; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            die "$NAME exited during startup; see $LOG_FILE"
        fi
        if ((SECONDS >= deadline)); then
            kill "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            die "$NAME did not answer on port $PORT within ${READY_SECONDS}s; see $LOG_FILE"
        fi
        sleep 0.25
    done
    say "ready"
}

# Stop the server the pid file names: SIGTERM, up to 10 s, then SIGKILL.
stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        say "not running (no live process named in $PID_FILE)"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid ignored SIGTERM for 10s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}
