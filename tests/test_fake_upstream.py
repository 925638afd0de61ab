"""Tests for devtools.fake_upstream, driven over real HTTP with httpx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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


@pytest.fixture
def client() -> Iterator[httpx.Client]:
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
    assert 0.27 < first_delta - start < 0.6
    assert sum(n == "ping" for n, _ in stamps) >= 3  # the initial ping plus >= 2 while waiting
    delta_times = [t for n, t in stamps if n == "content_block_delta"]
    assert all(b - a > 0.04 for a, b in pairwise(delta_times))


def test_small_writes_are_not_delayed(upstream: FakeUpstream, client: httpx.Client) -> None:
    """TCP_NODELAY: on a reused connection, the headers write followed by the message_start
    write would otherwise wait ~40 ms for a delayed ACK (Nagle)."""
    stream(client, upstream)  # warm up: the connection is reused from here on
    gaps = []
    for _ in range(3):
        with client.stream("POST", f"{upstream.url}/v1/messages", json=BODY, headers=HEADERS) as r:
            started = time.monotonic()
            events = EventSource(r).iter_sse()
            next(events)
            gaps.append(time.monotonic() - started)
            assert [sse.event for sse in events][-1] == "message_stop"  # drain: keep-alive
    assert min(gaps) < 0.02, gaps


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
