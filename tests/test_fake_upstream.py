"""Tests for devtools.fake_upstream, driven over real HTTP with httpx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from devtools.fake_upstream import FakeUpstream, RecordedRequest, Script

BODY = {
    "model": "claude-x",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi there"}],
}
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
REPO = Path(__file__).resolve().parents[1]

Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One client for the module: creating one costs ~40 ms (its SSL context)."""
    with httpx.Client(timeout=5.0) as c:
        yield c


def read_events(response: httpx.Response) -> Events:
    return [(sse.event, json.loads(sse.data)) for sse in EventSource(response).iter_sse()]


def stream(client: httpx.Client, up: FakeUpstream, body: dict[str, Any] | None = None) -> Events:
    with client.stream("POST", f"{up.url}/v1/messages", json=body or BODY, headers=HEADERS) as r:
        assert r.status_code == 200
        return read_events(r)


def names(events: Events) -> list[str]:
    return [name for name, _ in events]


def deltas(events: Events) -> list[dict[str, Any]]:
    return [data["delta"] for name, data in events if name == "content_block_delta"]


def text_of(events: Events) -> str:
    return "".join(d.get("text", "") for d in deltas(events))


def expect_client_closed(rec: RecordedRequest) -> None:
    assert rec.client_closed.wait(2), "server did not notice the client leaving"
    assert rec.finished.wait(2)


def test_normal_stream_matches_anthropic_wire_format(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["transfer-encoding"] == "chunked"
        events = read_events(r)
    assert names(events) == ["message_start", "ping", "content_block_start"] + [
        "content_block_delta"
    ] * 5 + ["content_block_stop", "message_delta", "message_stop"]
    message = events[0][1]["message"]
    assert message["id"].startswith("msg_")
    assert {k: message[k] for k in ("type", "role", "model", "content", "stop_reason")} == {
        "type": "message",
        "role": "assistant",
        "model": "fake-claude",
        "content": [],
        "stop_reason": None,
    }
    assert message["usage"] == {"input_tokens": 12, "output_tokens": 1}
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [d["text"] for d in deltas(events)] == ["Hello ", "from ", "the ", "fake ", "upstream."]
    assert all(d["type"] == "text_delta" for d in deltas(events))
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    assert events[-2][1] == {
        "type": "message_delta",
        "usage": {"output_tokens": 5},
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    assert events[-1][1] == {"type": "message_stop"}
    (rec,) = upstream.wait_for_requests(1)
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == "test-key"
    assert rec.body == BODY
    assert rec.finished.wait(1) and not rec.client_closed.is_set()


def test_tokens_model_and_stop_reason(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(
        Script(tokens=["é", "🙂", " x"], model="m2", input_tokens=3, stop_reason="max_tokens")
    )
    events = stream(client, upstream)
    assert text_of(events) == "é🙂 x"
    assert events[0][1]["message"]["model"] == "m2"
    assert events[0][1]["message"]["usage"]["input_tokens"] == 3
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_native_thinking(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(thinking=["Let me ", "think."], tokens=["Done."]))
    events = stream(client, upstream)
    blocks = [(d["index"], d["content_block"]) for n, d in events if n == "content_block_start"]
    assert blocks == [(0, {"type": "thinking", "thinking": ""}), (1, {"type": "text", "text": ""})]
    assert [(n, d["index"], d.get("delta")) for n, d in events[2:-2]] == [
        ("content_block_start", 0, None),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Let me "}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "think."}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": "fake-sig"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, {"type": "text_delta", "text": "Done."}),
        ("content_block_stop", 1, None),
    ]
    assert events[-2][1]["usage"]["output_tokens"] == 3


def test_inline_thinking(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(thinking=["a", "b"], thinking_mode="inline", tokens=["Hi"]))
    events = stream(client, upstream)
    assert [d["text"] for d in deltas(events)] == ["<thinking>", "a", "b", "</thinking>", "Hi"]
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        ("429", "rate_limit_error"),
        ("500", "api_error"),
        ("401", "authentication_error"),
        ("529", "overloaded_error"),
    ],
)
def test_fail_http_status(
    upstream: FakeUpstream, client: httpx.Client, status: str, error_type: str
) -> None:
    upstream.push(Script(fail=status))
    r = client.post(f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS)
    assert r.status_code == int(status)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == error_type


def test_fail_error_event(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail="error_event"))
    events = stream(client, upstream)
    assert names(events) == ["message_start", "ping", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_fail_hang_until_client_leaves(upstream: FakeUpstream) -> None:
    upstream.push(Script(fail="hang"))
    seen: list[str] = []
    with (
        httpx.Client(timeout=httpx.Timeout(5.0, read=0.3)) as c,
        pytest.raises(httpx.ReadTimeout),
        c.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r,
    ):
        seen.extend(sse.event for sse in EventSource(r).iter_sse())
    assert seen == ["message_start", "ping"]
    expect_client_closed(upstream.requests[0])


def test_fail_hang_headers(upstream: FakeUpstream) -> None:
    upstream.push(Script(fail="hang_headers"))
    with httpx.Client(timeout=httpx.Timeout(5.0, read=0.3)) as c, pytest.raises(httpx.ReadTimeout):
        c.post(f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS)
    expect_client_closed(upstream.wait_for_requests(1)[0])


def test_fail_empty(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail="empty"))
    r = client.post(f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.content == b""


def test_fail_no_text(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail="no_text"))
    events = stream(client, upstream)
    assert names(events) == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[2][1]["delta"]["stop_reason"] == "end_turn"


def test_fail_after_error_event(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail_after=2, fail_mode="error_event"))
    events = stream(client, upstream)
    assert text_of(events) == "Hello from "
    assert names(events)[-1] == "error" and "message_stop" not in names(events)


def test_fail_after_cut(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail_after=2, fail_mode="cut"))
    seen: Events = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r,
    ):
        seen.extend((s.event, json.loads(s.data)) for s in EventSource(r).iter_sse())
    assert text_of(seen) == "Hello from "
    assert names(seen)[-1] == "content_block_delta"


def test_fail_after_hang_keeps_pinging(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(fail_after=1, fail_mode="hang", ping_every=0.05))
    seen: Events = []
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        for s in EventSource(r).iter_sse():
            seen.append((s.event, json.loads(s.data)))
            if len(seen) == 7:
                break  # hang with pings never ends by itself: leave
    assert text_of(seen) == "Hello "
    assert names(seen)[4:] == ["ping"] * 3
    expect_client_closed(upstream.requests[0])


def test_fail_after_no_stop_counts_thinking(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(thinking=["t1", "t2"], fail_after=3, fail_mode="no_stop"))
    events = stream(client, upstream)  # the body ends cleanly, no exception
    assert [d.get("thinking", d.get("text")) for d in deltas(events)] == [
        "t1",
        "t2",
        None,
        "Hello ",
    ]
    assert "message_stop" not in names(events) and "error" not in names(events)


def test_fail_after_all_deltas_fires_before_message_delta(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.push(Script(tokens=["a", "b"], fail_after=2, fail_mode="no_stop"))
    assert names(stream(client, upstream))[-2:] == ["content_block_delta", "content_block_stop"]


def test_ttft_interval_and_pings(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(tokens=["a", "b", "c"], ttft=0.3, interval=0.05, ping_every=0.1))
    stamps: list[tuple[str, float]] = []
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        for sse in EventSource(r).iter_sse():
            stamps.append((sse.event, time.monotonic()))
    start = stamps[0][1]
    first_delta = next(t for n, t in stamps if n == "content_block_delta")
    assert first_delta - start > 0.27  # waits are lower bounds: a loaded machine only adds
    assert sum(n == "ping" for n, _ in stamps) >= 3  # the initial ping plus >= 2 while waiting
    delta_times = [t for n, t in stamps if n == "content_block_delta"]
    assert all(b - a > 0.04 for a, b in pairwise(delta_times))


def test_accepted_sockets_have_nodelay(upstream: FakeUpstream, client: httpx.Client) -> None:
    """TCP_NODELAY on every accepted socket: without it, the headers write followed by the
    message_start write on a reused connection waits ~40 ms for a delayed ACK (Nagle).
    Checked on the socket itself, not by timing, so a loaded machine cannot flake it."""
    stream(client, upstream)  # the connection stays open (keep-alive)
    connections = list(upstream._server.connections)
    assert connections
    for connection in connections:
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_raw_chunks_arrive_separately(upstream: FakeUpstream, client: httpx.Client) -> None:
    chunks = [b"event: ping\r\n", b"data: {}\r\n\r\n", "é".encode()[:1], "é".encode()[1:]]
    upstream.push(Script(raw=chunks, interval=0.05))
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert list(r.iter_raw()) == chunks


def test_push_is_fifo_then_default(client: httpx.Client) -> None:
    with FakeUpstream(default=Script(text="default")) as up:
        up.push(Script(text="one"), Script(text="two"))
        up.push(Script(text="three"))
        assert [text_of(stream(client, up)) for _ in range(5)] == [
            "one",
            "two",
            "three",
            "default",
            "default",
        ]
        assert len(up.wait_for_requests(5)) == 5
        with pytest.raises(TimeoutError):
            up.wait_for_requests(6, timeout=0.1)


def test_echo_string_and_blocks(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(echo=True), Script(echo=True))
    assert text_of(stream(client, upstream)) == "You said: hi there"
    body = dict(
        BODY,
        messages=[
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "new "},
                    {"type": "image", "source": {}},
                    {"type": "text", "text": "question"},
                ],
            },
        ],
    )
    assert text_of(stream(client, upstream, body)) == "You said: new question"


def test_control_endpoints(upstream: FakeUpstream, client: httpx.Client) -> None:
    assert client.get(f"{upstream.url}/_fake/health").json() == {"status": "ok"}
    r = client.post(
        f"{upstream.url}/_fake/scripts",
        json=[{"tokens": ["A", "B"]}, {"raw": ["event: x\n", "data: {}\n\n"]}],
    )
    assert r.status_code == 204
    assert text_of(stream(client, upstream)) == "AB"
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        assert r.read() == b"event: x\ndata: {}\n\n"
    listed = client.get(f"{upstream.url}/_fake/requests").json()
    assert len(listed) == 2
    assert listed[0]["path"] == "/v1/messages"
    assert listed[0]["body"] == BODY
    assert listed[0]["headers"]["x-api-key"] == "test-key"
    bad = client.post(f"{upstream.url}/_fake/scripts", json=[{"nope": 1}])
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]


def test_request_validation(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(text="kept"))
    r = client.post(f"{upstream.url}/v1/messages", json=BODY)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    r = client.post(
        f"{upstream.url}/v1/messages", json={"model": "m", "messages": []}, headers=HEADERS
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = client.post(f"{upstream.url}/v1/messages", content=b"not json", headers=HEADERS)
    assert r.status_code == 400
    r = client.post(f"{upstream.url}/v1/other", json=BODY, headers=HEADERS)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert [rec.body is None for rec in upstream.requests] == [False, False, True]
    assert all(rec.finished.is_set() for rec in upstream.requests)
    assert text_of(stream(client, upstream)) == "kept"  # rejected requests used no script


def test_script_from_dict() -> None:
    s = Script.from_dict({"text": "x", "raw": ["é", b"\x00"]})
    assert s.raw == ["é".encode(), b"\x00"]
    with pytest.raises(ValueError, match="bogus"):
        Script.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        Script(fail="explode")
    with pytest.raises(ValueError):
        Script(fail_mode="hang_headers")


def test_stop_does_not_hang_on_hanging_handlers(client: httpx.Client) -> None:
    up = FakeUpstream(default=Script(fail="hang")).start()
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            stream(client, up)
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=hang)
    t.start()
    (rec,) = up.wait_for_requests(1)
    started = time.monotonic()
    up.stop()
    assert time.monotonic() - started < 1.0
    assert rec.finished.is_set() and not rec.client_closed.is_set()
    t.join(2)
    assert not t.is_alive() and len(errors) == 1


def test_cli_serves_until_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "devtools.fake_upstream",
        "--port",
        "0",
        "--echo",
        "--thinking",
        "p1|p2",
    ]
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("fake upstream listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            with (
                httpx.Client(timeout=5.0) as c,
                c.stream("POST", f"{url}/v1/messages", json=BODY, headers=HEADERS) as r,
            ):
                events = read_events(r)
            assert [d.get("thinking") for d in deltas(events)][:2] == ["p1", "p2"]
            assert text_of(events) == "You said: hi there"
            proc.terminate()
            assert proc.wait(5) == 0
            assert "POST /v1/messages" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


# -- the other wire formats -------------------------------------------------------------------
OPENAI = "/v1/chat/completions"
OPENAI_BODY = {
    "model": "gpt-x",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "hi there"},
    ],
}
GEMINI = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
GEMINI_BODY = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "old"}]},
        {"role": "model", "parts": [{"text": "reply"}]},
        {"role": "user", "parts": [{"text": "hi "}, {"text": "there"}]},
    ],
}
OLLAMA = "/api/chat"
OLLAMA_BODY = {"model": "llama-x", "messages": [{"role": "user", "content": "hi there"}]}
WIRES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "anthropic": ("/v1/messages", BODY, HEADERS),
    "openai": (OPENAI, OPENAI_BODY, {"authorization": "Bearer sk-test"}),
    "gemini": (GEMINI, GEMINI_BODY, {"x-goog-api-key": "g-test"}),
    "ollama": (OLLAMA, OLLAMA_BODY, {}),
}
GEMINI_TAIL = (
    b'[{\n  "error": {\n    "code": 503,\n'
    b'    "message": "The model is overloaded. Please try again later.",\n'
    b'    "status": "UNAVAILABLE"\n  }\n}\n]'
)
every_wire = pytest.mark.parametrize("wire", list(WIRES))


def iter_frames(wire: str, response: httpx.Response) -> Iterator[Any]:
    """The decoded frames: SSE data (with "[DONE]" kept as a string) or NDJSON lines."""
    if wire == "ollama":
        yield from (json.loads(line) for line in response.iter_lines() if line)
        return
    for sse in EventSource(response).iter_sse():
        yield sse.data if sse.data == "[DONE]" else json.loads(sse.data)


def post(client: httpx.Client, up: FakeUpstream, wire: str, **kwargs: Any) -> httpx.Response:
    path, body, headers = WIRES[wire]
    return client.post(f"{up.url}{path}", **({"json": body, "headers": headers} | kwargs))


def generate(client: httpx.Client, up: FakeUpstream, wire: str, body: Any = None) -> list[Any]:
    path, default, headers = WIRES[wire]
    with client.stream("POST", f"{up.url}{path}", json=body or default, headers=headers) as r:
        assert r.status_code == 200
        return list(iter_frames(wire, r))


# wire -> frame -> [(kind, piece or None)]
PIECES: dict[str, Callable[[dict[str, Any]], list[tuple[str, Any]]]] = {
    "anthropic": lambda f: [
        (k, f["delta"].get(k)) for k in ("thinking", "text") if f["type"] == "content_block_delta"
    ],
    "openai": lambda f: [
        (k, c["delta"].get(field))
        for c in f.get("choices", [])
        for k, field in (("thinking", "reasoning_content"), ("text", "content"))
    ],
    "gemini": lambda f: [
        ("thinking" if p.get("thought") else "text", p["text"])
        for c in f.get("candidates", [])
        for p in c["content"].get("parts", [])
    ],
    "ollama": lambda f: [
        (kind, f["message"].get(field))
        for kind, field in (("thinking", "thinking"), ("text", "content"))
        if "message" in f
    ],
}
# wire -> frame -> the stop / finish reason it carries, if any
STOPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "anthropic": lambda f: f.get("delta", {}).get("stop_reason"),
    "openai": lambda f: f["choices"][0]["finish_reason"] if f.get("choices") else None,
    "gemini": lambda f: f["candidates"][0].get("finishReason") if "candidates" in f else None,
    "ollama": lambda f: f.get("done_reason"),
}


def pieces(wire: str, frames: list[Any]) -> list[tuple[str, str]]:
    """(kind, piece) for every thinking / text delta, whatever the format."""
    found = [kp for f in frames if isinstance(f, dict) for kp in PIECES[wire](f)]
    return [(kind, piece) for kind, piece in found if piece]


def stop_of(wire: str, frames: list[Any]) -> str | None:
    """The finish / stop reason the stream ended with, or None when it never said."""
    reasons = [STOPS[wire](f) for f in frames if isinstance(f, dict)]
    return next((r for r in reasons if r), None)


@every_wire
def test_every_format_native_and_inline_thinking(
    upstream: FakeUpstream, client: httpx.Client, wire: str
) -> None:
    upstream.push(
        Script(thinking=["t1", "t2"], tokens=["A", "B"]),
        Script(thinking=["t"], thinking_mode="inline", echo=True),
    )
    native = generate(client, upstream, wire)
    assert pieces(wire, native) == [
        ("thinking", "t1"),
        ("thinking", "t2"),
        ("text", "A"),
        ("text", "B"),
    ]
    inline = pieces(wire, generate(client, upstream, wire))
    assert inline == [
        ("text", p) for p in ["<thinking>", "t", "</thinking>", "You ", "said: ", "hi ", "there"]
    ]


@pytest.mark.parametrize(
    ("wire", "stops"),
    [
        ("anthropic", ("end_turn", "max_tokens")),
        ("openai", ("stop", "length")),
        ("gemini", ("STOP", "MAX_TOKENS")),
        ("ollama", ("stop", "length")),
    ],
)
def test_every_format_stop_reasons_and_no_stop(
    upstream: FakeUpstream, client: httpx.Client, wire: str, stops: tuple[str, str]
) -> None:
    upstream.push(
        Script(),
        Script(stop_reason="max_tokens"),
        Script(fail="no_text"),
        Script(fail_after=2, fail_mode="no_stop"),
        Script(fail="no_stop"),
    )
    assert stop_of(wire, generate(client, upstream, wire)) == stops[0]
    assert stop_of(wire, generate(client, upstream, wire)) == stops[1]
    no_text = generate(client, upstream, wire)
    assert pieces(wire, no_text) == [] and stop_of(wire, no_text) == stops[0]
    cut_short = generate(client, upstream, wire)  # ends cleanly, but with no stop
    assert [p for _, p in pieces(wire, cut_short)] == ["Hello ", "from "]
    assert stop_of(wire, cut_short) is None and "[DONE]" not in cut_short
    assert stop_of(wire, generate(client, upstream, wire)) is None


@every_wire
def test_every_format_empty_raw_and_status(
    upstream: FakeUpstream, client: httpx.Client, wire: str
) -> None:
    upstream.push(
        Script(fail="empty"), Script(raw=[b"a", b"b\n"], interval=0.02), Script(fail="429")
    )
    content_type = {"ollama": "application/x-ndjson"}.get(wire, "text/event-stream")
    r = post(client, upstream, wire)
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["content-type"].startswith(content_type)
    path, body, headers = WIRES[wire]
    with client.stream("POST", f"{upstream.url}{path}", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith(content_type)
        assert list(r.iter_raw()) == [b"a", b"b\n"]
    r = post(client, upstream, wire)
    assert r.status_code == 429 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert {
        "anthropic": lambda: error["type"] == "rate_limit_error",
        "openai": lambda: error["code"] == "rate_limit_exceeded" and "message" in error,
        "gemini": lambda: (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED"),
        "ollama": lambda: error == "fake upstream failure 429",
    }[wire]()


@every_wire
def test_every_format_cut_and_hang(upstream: FakeUpstream, wire: str) -> None:
    upstream.push(Script(fail_after=1, fail_mode="cut"), Script(fail_after=1, fail_mode="hang"))
    path, body, headers = WIRES[wire]
    for error in (httpx.RemoteProtocolError, httpx.ReadTimeout):
        seen: list[Any] = []
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=0.2)) as c,
            pytest.raises(error),
            c.stream("POST", f"{upstream.url}{path}", json=body, headers=headers) as r,
        ):
            seen.extend(iter_frames(wire, r))
        assert pieces(wire, seen) == [("text", "Hello ")]
    assert not upstream.requests[0].client_closed.is_set()
    expect_client_closed(upstream.requests[1])


@every_wire
def test_every_format_ttft_and_interval(
    upstream: FakeUpstream, client: httpx.Client, wire: str
) -> None:
    upstream.push(Script(tokens=["a", "b"], ttft=0.15, interval=0.08))
    path, body, headers = WIRES[wire]
    started, stamps = time.monotonic(), []
    with client.stream("POST", f"{upstream.url}{path}", json=body, headers=headers) as r:
        for frame in iter_frames(wire, r):
            if pieces(wire, [frame]):
                stamps.append(time.monotonic() - started)
    assert len(stamps) == 2
    assert stamps[0] > 0.14 and stamps[1] - stamps[0] > 0.07  # lower bounds only: CI is noisy


@pytest.mark.parametrize(
    ("wire", "refused", "status"),
    [
        ("anthropic", {"headers": {}}, 401),
        ("openai", {"headers": {}}, 401),
        ("openai", {"headers": {"authorization": "Basic sk-test"}}, 401),
        ("openai", {"json": {"model": "m"}}, 400),
        ("gemini", {"headers": {}}, 403),
        ("gemini", {"json": {"systemInstruction": {}}}, 400),
        ("ollama", {"json": {"messages": []}}, 400),
        ("ollama", {"content": b"not json"}, 400),
    ],
)
def test_every_format_refuses_without_using_a_script(
    upstream: FakeUpstream, client: httpx.Client, wire: str, refused: dict[str, Any], status: int
) -> None:
    upstream.push(Script(tokens=["kept"]))
    r = post(client, upstream, wire, **refused)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert "error" in r.json()
    assert pieces(wire, generate(client, upstream, wire)) == [("text", "kept")]
    assert all(rec.finished.wait(1) for rec in upstream.wait_for_requests(2))


def test_openai_stream_shape_and_usage(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(thinking=["hm"], tokens=["Hi", "!"], input_tokens=7, model="gpt-fake"))
    with client.stream(
        "POST", f"{upstream.url}{OPENAI}", json=OPENAI_BODY, headers=WIRES["openai"][2]
    ) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        sses = list(EventSource(r).iter_sse())
    assert {s.event for s in sses} == {"message"}  # no event: lines
    chunks = [json.loads(s.data) for s in sses[:-1]]
    assert sses[-1].data == "[DONE]"
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-fake" for c in chunks)
    assert all(isinstance(c["created"], int) for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "hm"},
        {"content": "Hi"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    (rec,) = upstream.wait_for_requests(1)
    assert (rec.path, rec.model, rec.body) == (OPENAI, "gpt-x", OPENAI_BODY)
    assert rec.headers["authorization"] == "Bearer sk-test"


def test_openai_without_include_usage_and_echo_of_parts(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.push(Script(echo=True))
    body = dict(OPENAI_BODY, stream_options=None)
    body["messages"] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "new "},
                {"type": "image_url"},
                {"type": "text", "text": "one"},
            ],
        }
    ]
    frames = generate(client, upstream, "openai", body)
    assert frames[-1] == "[DONE]" and frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in f for f in frames[:-1])
    assert "".join(p for _, p in pieces("openai", frames)) == "You said: new one"


def test_openai_errors_and_keep_alive(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(
        Script(fail="error_event"),
        Script(fail_after=1, fail_mode="error_event"),
        Script(tokens=["a"], ttft=0.2, ping_every=0.05),
    )
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    first = generate(client, upstream, "openai")
    assert first[1:] == [error] and first[0]["choices"][0]["delta"]["role"] == "assistant"
    later = generate(client, upstream, "openai")
    assert pieces("openai", later) == [("text", "Hello ")] and later[-1] == error
    r = post(client, upstream, "openai")
    assert r.content.count(b"\n\n: keep-alive\n\n") >= 2
    assert r.content.endswith(b"data: [DONE]\n\n")
    r = post(client, upstream, "openai", headers={})
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_gemini_stream_shape(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Script(thinking=["hm"], tokens=["Hi", "!"], input_tokens=5, model="gem-fake"))
    r = post(client, upstream, "gemini")
    assert r.headers["content-type"] == "text/event-stream"
    raw = r.content.split(b"\r\n\r\n")
    assert raw[-1] == b"" and all(e.startswith(b"data: {") and b"\n" not in e for e in raw[:-1])
    events = [json.loads(e[len(b"data: ") :]) for e in raw[:-1]]
    assert [e["candidates"][0]["content"].get("parts") for e in events] == [
        [{"text": "hm", "thought": True}],
        [{"text": "Hi"}],
        [{"text": "!"}],
        None,
    ]
    assert all(e["modelVersion"] == "gem-fake" for e in events)
    assert len({e["responseId"] for e in events}) == 1
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["candidates"][0] == {
        "content": {"role": "model"},
        "finishReason": "STOP",
        "index": 0,
    }
    assert events[-1]["usageMetadata"] == {
        "promptTokenCount": 5,
        "candidatesTokenCount": 2,
        "thoughtsTokenCount": 1,
        "totalTokenCount": 8,
    }
    (rec,) = upstream.wait_for_requests(1)
    assert (rec.path, rec.model, rec.body) == (GEMINI, "gemini-x", GEMINI_BODY)
    assert rec.headers["x-goog-api-key"] == "g-test"


def test_gemini_errors_and_no_keep_alive(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(
        Script(fail_after=2, fail_mode="error_event"),
        Script(fail_after=1, fail_mode="error_data"),
        Script(fail="error_event"),
        Script(tokens=["a"], ttft=0.2, ping_every=0.03),
        Script(echo=True),
    )
    r = post(client, upstream, "gemini")
    assert r.status_code == 200 and r.content.endswith(b"\r\n\r\n" + GEMINI_TAIL)
    assert r.content.count(b"data: ") == 2
    framed = generate(client, upstream, "gemini")
    assert framed[-1] == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    assert post(client, upstream, "gemini").content == GEMINI_TAIL
    assert post(client, upstream, "gemini").content.count(b"data: ") == 2  # no pings
    assert (
        "".join(p for _, p in pieces("gemini", generate(client, upstream, "gemini")))
        == "You said: hi there"
    )
    r = post(client, upstream, "gemini", headers={})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    no_sse = client.post(
        f"{upstream.url}{GEMINI.split('?')[0]}", json=GEMINI_BODY, headers=WIRES["gemini"][2]
    )
    assert no_sse.status_code == 400 and no_sse.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_ollama_stream_shape_and_errors(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(
        Script(
            thinking=["hm"],
            tokens=["Hi"],
            input_tokens=4,
            model="llama-fake",
            stop_reason="max_tokens",
        ),
        Script(fail_after=1, fail_mode="error_event"),
    )
    r = post(client, upstream, "ollama")
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.content.endswith(b"}\n") and r.content.count(b"\n") == 3
    lines = [json.loads(line) for line in r.content.splitlines()]
    assert all(line["model"] == "llama-fake" for line in lines)
    assert all(datetime.fromisoformat(line["created_at"]) for line in lines)
    assert [(line["message"], line["done"]) for line in lines[:2]] == [
        ({"role": "assistant", "content": "", "thinking": "hm"}, False),
        ({"role": "assistant", "content": "Hi"}, False),
    ]
    last = lines[-1]
    assert last["message"] == {"role": "assistant", "content": ""}
    counts = ("done", "done_reason", "prompt_eval_count", "eval_count")
    assert {k: last[k] for k in counts} == dict(zip(counts, (True, "length", 4, 2), strict=True))
    durations = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
    assert all(isinstance(last[k], int) and last[k] >= 0 for k in durations)
    assert last["total_duration"] >= last["prompt_eval_duration"] + last["eval_duration"] > 0
    failed = generate(client, upstream, "ollama")
    assert failed[-1] == {"error": "model runner has unexpectedly stopped"}
    assert pieces("ollama", failed) == [("text", "Hello ")]
    first = upstream.wait_for_requests(2)[0]
    assert (first.path, first.model, first.body) == (OLLAMA, "llama-x", OLLAMA_BODY)
    assert "authorization" not in first.headers


@every_wire
def test_error_data_differs_from_error_event_only_for_gemini(
    upstream: FakeUpstream, client: httpx.Client, wire: str
) -> None:
    upstream.push(*(Script(fail_after=1, fail_mode=m) for m in ("error_event", "error_data")))
    event, data = (generate(client, upstream, wire) for _ in range(2))
    assert "error" in data[-1]
    assert (event[-1] == data[-1]) == (wire != "gemini")  # Gemini's error_event is unframed


def test_requests_listing_has_the_model(upstream: FakeUpstream, client: httpx.Client) -> None:
    for wire in WIRES:
        generate(client, upstream, wire)
    listed = client.get(f"{upstream.url}/_fake/requests").json()
    assert [r["model"] for r in listed] == ["claude-x", "gpt-x", "gemini-x", "llama-x"]
    assert Script.from_dict({"fail": "error_data", "fail_mode": "error_data"}).fail == "error_data"


def test_tool_calls_and_json_replies_are_scriptable_over_http(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    scripts = [
        {
            "tokens": [],
            "tool_calls": [{"name": "weather", "args": {"city": "Oslo"}, "id": "toolu_01X"}],
        },
        {"json": {"answer": 42}, "arg_piece": 3, "split_bytes": 5},
    ]
    assert client.post(f"{upstream.url}/_fake/scripts", json=scripts).status_code == 204
    with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "toolu_01X",
        "name": "weather",
        "input": {},
    }
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert json.loads("".join(fragments)) == {"city": "Oslo"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert text_of(stream(client, upstream)) == '{"answer":42}'
    for bad in ({"tool_calls": [{"args": {}}]}, {"tool_calls": [{"name": "w", "extra": 1}]}):
        refused = client.post(f"{upstream.url}/_fake/scripts", json=[bad])
        assert refused.status_code == 400
