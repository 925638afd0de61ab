"""The refusals and bounds of issue 8 on the real server (functions-framework + gunicorn),
as a client sees them over a socket: overload, bad JSON, text that cannot be encoded,
and a reply that never ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import log_lines

SSE = "/vac/assistant/live/sse"


@pytest.fixture
def server(fake: FakeUpstream) -> Iterator[str]:
    env = {"THREADS": "4", "MAX_STREAMS": "2", "MAX_REPLY_SECONDS": "2", "HEARTBEAT_SECONDS": "0.5"}
    with running_service(env) as service:
        yield service.url


def test_past_max_streams_a_503_and_health_still_answers(server: str, fake: FakeUpstream) -> None:
    hanging = Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang")
    fake.push(hanging, hanging)
    with httpx.Client(timeout=10) as client:
        streams = [client.stream("POST", f"{server}{SSE}", json={"user_input": "hi"})
                   for _ in range(2)]  # fmt: skip
        for stream in streams:
            assert stream.__enter__().status_code == 200
        try:
            refused = httpx.post(f"{server}{SSE}", json={"user_input": "hi"}, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["code"] == "overloaded"
            assert refused.headers["Retry-After"]
            assert httpx.get(f"{server}/health", timeout=5).status_code == 200
            assert len(fake.requests) == 2
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"user_input": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"user_input": "hi", "n": ' + b"7" * 5000 + b"}", "number longer"),
        (b'{"user_input": "\\ud800"}', "user_input contains text that cannot be encoded"),
    ],
    ids=["deep", "huge-number", "lone-surrogate"],
)
def test_bad_json_is_a_400_on_the_wire(
    server: str, fake: FakeUpstream, body: bytes, mentions: str
) -> None:
    response = httpx.post(
        f"{server}{SSE}", content=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert mentions in response.json()["error"]
    assert fake.requests == []


def test_a_reply_that_never_ends_is_cut(server: str, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang", ping_every=0.1))
    frames: list[str] = []
    with httpx.stream("POST", f"{server}{SSE}", json={"user_input": "hi"}, timeout=10) as reply:
        frames = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert '"code":"reply_too_long"' in frames[-2]
    assert frames[-1] == "data: [DONE]"
    assert fake.wait_for_requests(1)[0].client_closed.wait(5)


def test_max_streams_set_at_or_above_threads_is_kept_below_them(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """MAX_STREAMS=8 with THREADS=4 would let streams hold every thread (/health then
    waits for one to end); the worker uses 3 and says so."""
    hanging = Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang")
    fake.push(hanging, hanging, hanging)
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(
        {"THREADS": "4", "MAX_STREAMS": "8", "MAX_STREAMS_PER_USER": "8"}, output=output
    ) as service, httpx.Client(timeout=10) as client:  # fmt: skip
        streams = [client.stream("POST", f"{service.url}{SSE}", json={"user_input": "hi"})
                   for _ in range(3)]  # fmt: skip
        try:
            for stream in streams:
                assert stream.__enter__().status_code == 200
            refused = httpx.post(f"{service.url}{SSE}", json={"user_input": "hi"}, timeout=10)
            assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
            assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    capped = [line for line in log_lines(log.read_text())
              if line["message"] == "config.max_streams_capped"]  # fmt: skip
    assert [line["max_streams"] for line in capped] == [3]
