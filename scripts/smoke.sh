#!/usr/bin/env bash
# Smoke-test a running assistant endpoint with curl only (no python, no jq).
#
#   scripts/smoke.sh http://127.0.0.1:1956
#   AUTH_TOKEN="$FIREBASE_ID_TOKEN" scripts/smoke.sh https://assistant-xyz.a.run.app   # AUTH_MODE=firebase
#   AUTH_TOKEN="$(gcloud auth print-identity-token)" scripts/smoke.sh https://...        # AUTH_MODE=iam
#
# Env: AUTH_TOKEN (sent as "Authorization: Bearer ..."), REQUIRE_AUTH (1: the
# endpoint must refuse a call without a token), ASSISTANT_ID (smoke-test),
# SMOKE_QUESTION, SMOKE_TIMEOUT (120 s, per request).
#
# Checks, each printing one "ok:" line or one "FAIL:" line and exiting 1:
#   health       GET /health is 200 with "status":"ok"
#   no token     a POST without Authorization (and with an empty user_input, so
#                an open endpoint answers 400 and calls no model) is a 401
#                unauthenticated with WWW-Authenticate (AUTH_MODE=firebase), a
#                403 from Cloud Run (iam), or a 400 (an open, local endpoint);
#                with REQUIRE_AUTH=1 only the 401 / 403 pass
#   -- without AUTH_TOKEN, an endpoint that refused the call stops here --
#   bad request  {"user_input": ""} to the SSE route is 400 invalid_request
#   stream       the SSE route streams chunk frames, ends with exactly one
#                {"answer":...} frame and then [DONE], and its X-Trace-Id
#                header equals metadata.trace_id
#   legacy       the JSON route (no Accept: text/event-stream) is 200 with "answer"
#
# The first-byte time printed is curl's time_starttransfer: the SSE route holds
# its status until the first chunk (or HEARTBEAT_SECONDS), so on a healthy
# stream it is close to the time to the first chunk. The server's own
# measurement, metadata.timing.first_chunk_ms, is printed next to it.
set -euo pipefail

cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[[ $# -eq 1 ]] || fail "usage: $0 URL   (e.g. $0 http://127.0.0.1:1956)"
command -v curl >/dev/null || fail "curl not found: install curl"

BASE="${1%/}"
[[ "$BASE" =~ ^https?://[^/]+ ]] || fail "URL must start with http:// or https://, got '$1'"
ASSISTANT_ID="${ASSISTANT_ID:-smoke-test}"
SMOKE_QUESTION="${SMOKE_QUESTION:-Smoke test: reply with one short sentence.}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-120}"
[[ "$SMOKE_TIMEOUT" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "SMOKE_TIMEOUT must be a number of seconds, got '$SMOKE_TIMEOUT'"
[[ "$ASSISTANT_ID" =~ ^[A-Za-z0-9_-]{1,128}$ ]] || fail "ASSISTANT_ID must be 1-128 of [A-Za-z0-9_-], got '$ASSISTANT_ID'"

SSE_URL="$BASE/vac/assistant/$ASSISTANT_ID/sse"
JSON_URL="$BASE/vac/assistant/$ASSISTANT_ID"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/smoke.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

REQUIRE_AUTH="${REQUIRE_AUTH:-0}"
[[ "$REQUIRE_AUTH" =~ ^[01]$ ]] || fail "REQUIRE_AUTH must be 0 or 1, got '$REQUIRE_AUTH'"
auth=()
if [[ -n "${AUTH_TOKEN:-}" ]]; then
    auth=(-H "Authorization: Bearer $AUTH_TOKEN")
fi

json_escape() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\r'/\\r}"
    s="${s//$'\t'/\\t}"
    printf '%s' "$s"
}

# request NAME URL [curl args...]: runs curl with the body in $tmp/NAME.body and
# the headers in $tmp/NAME.headers; sets $status to the HTTP status and $timing
# to "time_starttransfer time_total". A transport error (no HTTP status) fails.
# `request` sends the Authorization header when AUTH_TOKEN is set;
# `unauthenticated_request` never does.
request() {
    curl_to "$@" ${auth[@]+"${auth[@]}"}
}
unauthenticated_request() {
    curl_to "$@"
}
curl_to() {
    local name="$1" url="$2" out rc=0
    shift 2
    out="$(curl -sS --max-time "$SMOKE_TIMEOUT" "$@" \
        -D "$tmp/$name.headers" -o "$tmp/$name.body" \
        -w '%{http_code} %{time_starttransfer} %{time_total}' "$url" 2>"$tmp/$name.err")" || rc=$?
    if [[ $rc -ne 0 ]]; then
        local err
        err="$(tr -d '\r' <"$tmp/$name.err" | grep -m1 . || true)"
        if [[ $rc -eq 28 ]]; then
            fail "${name//_/ }: $url timed out after ${SMOKE_TIMEOUT}s (SMOKE_TIMEOUT); ${err:-curl exit 28}"
        fi
        fail "${name//_/ }: cannot reach $url: ${err:-curl exit $rc}"
    fi
    status="${out%% *}"
    timing="${out#* }"
}

# A short, one-line excerpt of a response body, for failure messages.
excerpt() { tr -d '\r' <"$1" | tr '\n' ' ' | cut -c1-300; }

# The first string (json_field) or number (json_number) value of "key" in a
# JSON text, or empty. Keys inside string values are escaped (\"key\"), so
# they never match.
json_field() {
    { printf '%s' "$2" | grep -o "\"$1\" *: *\"[^\"]*\"" || true; } | head -n1 | sed 's/^[^:]*: *"//; s/"$//'
}
json_number() {
    { printf '%s' "$2" | grep -o "\"$1\" *: *[0-9][0-9.]*" || true; } | head -n1 | sed 's/^[^:]*: *//'
}

# ---------------------------------------------------------------- (a) health
request health "$BASE/health"
[[ "$status" == 200 ]] || fail "health: GET $BASE/health returned HTTP $status: $(excerpt "$tmp/health.body")"
grep -Eq '"status" *: *"ok"' "$tmp/health.body" \
    || fail "health: GET $BASE/health body has no \"status\":\"ok\": $(excerpt "$tmp/health.body")"
ok "health: GET /health is 200 $(excerpt "$tmp/health.body")"

# ---------------------------------------------------------------- (b) no token
unauthenticated_request no_token "$SSE_URL" -X POST -H 'Content-Type: application/json' \
    -H 'Accept: text/event-stream' --data '{"user_input": ""}'
tr -d '\r' <"$tmp/no_token.headers" >"$tmp/no_token.h"
refused=1
case "$status" in
    401)
        grep -Eq '"code" *: *"unauthenticated"' "$tmp/no_token.body" \
            || fail "no token: 401 body lacks \"code\":\"unauthenticated\": $(excerpt "$tmp/no_token.body")"
        grep -Eiq '^www-authenticate: *Bearer' "$tmp/no_token.h" \
            || fail "no token: the 401 has no WWW-Authenticate: Bearer header"
        ok "no token: a POST without Authorization is 401 unauthenticated (the service checks tokens)"
        ;;
    403) ok "no token: a POST without Authorization is 403 (Cloud Run IAM refuses it)" ;;
    400)
        ((REQUIRE_AUTH == 0)) || fail "no token: the endpoint answered a call without a token (HTTP 400, want 401): it is open"
        refused=0
        ok "no token: the endpoint is open (AUTH_MODE=none or a trusted network): 400 for the empty input"
        ;;
    *) fail "no token: a POST without Authorization returned HTTP $status, want 401 (or 403 / 400): $(excerpt "$tmp/no_token.body")" ;;
esac
if ((refused)) && [[ -z "${AUTH_TOKEN:-}" ]]; then
    echo "ok: smoke passed against $BASE (health and the refusal only: set AUTH_TOKEN to check a stream)"
    exit 0
fi

# ---------------------------------------------------------------- (c) bad request
request bad_request "$SSE_URL" -X POST -H 'Content-Type: application/json' -H 'Accept: text/event-stream' \
    --data '{"user_input": ""}'
[[ "$status" == 400 ]] || fail "bad request: empty user_input to $SSE_URL returned HTTP $status, want 400: $(excerpt "$tmp/bad_request.body")"
grep -Eq '"code" *: *"invalid_request"' "$tmp/bad_request.body" \
    || fail "bad request: 400 body lacks \"code\":\"invalid_request\": $(excerpt "$tmp/bad_request.body")"
ok "bad request: empty user_input is 400 invalid_request"

# ---------------------------------------------------------------- (d) stream
payload="{\"user_input\":\"$(json_escape "$SMOKE_QUESTION")\"}"
request stream "$SSE_URL" -N -X POST -H 'Content-Type: application/json' -H 'Accept: text/event-stream' \
    --data "$payload"
[[ "$status" == 200 ]] || fail "stream: POST $SSE_URL returned HTTP $status, want 200: $(excerpt "$tmp/stream.body")"
tr -d '\r' <"$tmp/stream.headers" >"$tmp/stream.h"
grep -Eiq '^content-type: *text/event-stream' "$tmp/stream.h" \
    || fail "stream: content-type is not text/event-stream: $(grep -i '^content-type:' "$tmp/stream.h" || echo none)"
grep '^data: ' "$tmp/stream.body" >"$tmp/stream.data" || fail "stream: no data: frames in the response: $(excerpt "$tmp/stream.body")"

chunks="$(grep -c '^data: {"chunk" *:' "$tmp/stream.data" || true)"
errors="$(grep -c '^data: {"error" *:' "$tmp/stream.data" || true)"
answers="$(grep -c '^data: {"answer" *:' "$tmp/stream.data" || true)"
if ((errors > 0)); then
    frame="$(grep -m1 '^data: {"error" *:' "$tmp/stream.data")"
    fail "stream: ended with an error frame, code=$(json_field code "$frame"): $(json_field error "$frame")"
fi
((answers == 1)) || fail "stream: want exactly one {\"answer\":...} frame, got $answers"
((chunks >= 1)) || fail "stream: no {\"chunk\":...} frame before the answer"
last="$(tail -n1 "$tmp/stream.data")"
[[ "$last" == "data: [DONE]" ]] || fail "stream: last data frame is not [DONE]: ${last:0:200}"
dones="$(grep -c '^data: \[DONE\]$' "$tmp/stream.data" || true)"
((dones == 1)) || fail "stream: want exactly one [DONE], got $dones"
terminal="$(tail -n2 "$tmp/stream.data" | head -n1)"
[[ "$terminal" =~ ^data:\ \{\"answer\" ]] || fail "stream: the frame before [DONE] is not the answer: ${terminal:0:200}"

header_trace="$(sed -n 's/^[Xx]-[Tt]race-[Ii]d: *//p' "$tmp/stream.h" | tail -n1)"
[[ -n "$header_trace" ]] || fail "stream: no X-Trace-Id response header"
meta_trace="$(json_field trace_id "$terminal")"
[[ -n "$meta_trace" ]] || fail "stream: the answer frame has no metadata trace_id"
[[ "$header_trace" == "$meta_trace" ]] \
    || fail "stream: X-Trace-Id header '$header_trace' differs from metadata trace_id '$meta_trace'"
read -r first_byte total <<<"$timing"
first_chunk_ms="$(json_number first_chunk_ms "$terminal")"
ok "stream: 200 text/event-stream, $chunks chunk frames, one answer frame, then [DONE]; trace_id $meta_trace"

# ---------------------------------------------------------------- (e) legacy JSON
request legacy "$JSON_URL" -X POST -H 'Content-Type: application/json' --data "$payload"
[[ "$status" == 200 ]] || fail "legacy: POST $JSON_URL (JSON) returned HTTP $status, want 200: $(excerpt "$tmp/legacy.body")"
grep -Eq '"answer" *:' "$tmp/legacy.body" \
    || fail "legacy: 200 body has no \"answer\": $(excerpt "$tmp/legacy.body")"
ok "legacy: JSON route is 200 with an answer"

echo "ok: smoke passed against $BASE: $chunks chunks, first byte ${first_byte}s, stream total ${total}s, server first_chunk_ms=${first_chunk_ms:-?}"
