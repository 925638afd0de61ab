"""The reference client (clients/js/) in a real browser, and in Node.js.

Headless Chromium (Debian's package, installed by scripts/browser-tools.sh; Playwright drives it
through `executable_path`, since no browser download works here) loads the demo page from its
own server (devtools/demo/) and streams from the real service on another port, so every request
is cross-origin, as from a deployed frontend. The model is the fake upstream.

The browser tests are skipped when /usr/bin/chromium is missing, unless scripts/test.sh ran
browser-tools.sh (it sets VAC_BROWSER_TESTS=required): then a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from devtools.demo import DemoServer
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# What machines/python.md says Chromium needs here as root on a closed network. Playwright adds
# --headless and a fresh temporary --user-data-dir itself (it refuses one in `args`).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HEARTBEAT = 1  # seconds: low, so a slow first token makes the service send `: ping`
PATH = "/vac/assistant/browser-test/sse"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: scripts/browser-tools.sh installs it"
        if os.environ.get("VAC_BROWSER_TESTS") == "required":
            pytest.fail(why, pytrace=False)
        pytest.skip(f"{why} (scripts/test.sh runs it)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with DemoServer() as server:
        yield server.url


@pytest.fixture
def service(fake: FakeUpstream, demo: str) -> Iterator[str]:
    env = {"CORS_ORIGINS": f"https://other.example,{demo}", "HEARTBEAT_SECONDS": str(HEARTBEAT)}
    with running_service(env) as running:
        yield running.url


@pytest.fixture
def page(browser: Browser, demo: str, service: str) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{demo}/")
    page.fill("#url", service + PATH)
    yield page
    context.close()


def send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def events_when_done(page: Page) -> list[dict[str, Any]]:
    """The page's record of one request, once the client's promise has resolved."""
    page.wait_for_function("() => vacDemo.events.some((e) => e.type === 'end')")
    events: list[dict[str, Any]] = page.evaluate("vacDemo.events")
    return events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


def test_chunks_show_as_they_arrive_cross_origin_with_a_readable_trace_id(
    page: Page, fake: FakeUpstream, demo: str, service: str
) -> None:
    tokens = ["One ", "two ", "three ", "four ", "five."]
    fake.push(Script(tokens=tokens, interval=0.3))
    assert demo.rsplit(":", 1)[1] != service.rsplit(":", 1)[1]  # another origin
    send(page, "Count to five")

    page.wait_for_function("() => document.getElementById('answer').textContent.includes('One')")
    shown_early = page.evaluate("vacDemo.events.map((e) => e.type)")
    assert "final" not in shown_early  # the first chunk was on screen before the end

    events = events_when_done(page)
    chunks, [final] = of_type(events, "chunk"), of_type(events, "final")
    assert "".join(chunk["text"] for chunk in chunks) == "".join(tokens)
    assert len(chunks) == len(tokens)
    assert final["at"] - chunks[0]["at"] > 900  # ms: four intervals of 0.3 s came after it
    assert chunks[-1]["at"] - chunks[0]["at"] > 900

    [opened] = of_type(events, "open")
    trace_id = opened["traceId"]
    assert opened["status"] == 200
    assert trace_id and re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", trace_id)
    assert opened["header"] == trace_id  # X-Trace-Id is readable cross-origin
    assert {event["traceId"] for event in [*chunks, final]} == {trace_id}
    assert page.text_content("#trace") == trace_id
    metadata = json.loads(page.text_content("#metadata") or "")
    assert metadata["trace_id"] == trace_id
    assert page.text_content("#answer") == "".join(tokens)
    assert page.text_content("#status") == "done"
    assert page.is_hidden("#error")
    assert len(fake.requests) == 1  # one POST, never re-sent


def test_a_reply_of_tool_calls_alone_shows_them(page: Page, fake: FakeUpstream) -> None:
    """Its reply box stayed empty, the call only in the raw metadata: a reviewer took it
    for nothing happening."""
    call = {"id": "t1", "name": "weather", "args": {"city": "Oslo"}}
    fake.push(Script(text="", tokens=[], tool_calls=[call]))
    send(page, "Weather in Oslo?")
    events_when_done(page)
    assert page.is_visible("#calls")
    assert page.text_content("#calls") == 'tool call t1: weather({"city":"Oslo"})'
    fake.push(Script(tokens=["Plain."]))  # the next reply's calls: none, hidden again
    send(page, "Thanks")
    events_when_done(page)
    assert page.is_hidden("#calls")


def test_thinking_goes_to_the_panel_and_the_final_metadata_wins(
    page: Page, fake: FakeUpstream
) -> None:
    fake.push(Script(thinking=["Weighing ", "it."], tokens=["The ", "answer."], interval=0.05))
    send(page, "Think first")
    events = events_when_done(page)
    [final] = of_type(events, "final")
    assert "<thinking>" in final["answer"]
    assert page.text_content("#answer") == "The answer."
    assert page.text_content("#thinking") == "Weighing it."
    assert page.get_attribute("#thinking-panel", "open") is not None
    metadata = json.loads(page.text_content("#metadata") or "")
    assert metadata["thinking_content"] == "Weighing it."


def test_an_error_frame_is_shown_with_the_text_before_it(page: Page, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["Half ", "an ", "answer"], fail_after=2, fail_mode="error_event"))
    send(page, "Fail halfway")
    events = events_when_done(page)
    [error] = of_type(events, "error")
    assert error["status"] == 200
    assert error["partial"] == "Half an "
    assert error["code"] and error["error"]
    assert error["traceId"] == of_type(events, "open")[0]["traceId"]
    assert of_type(events, "final") == []
    shown = page.text_content("#error") or ""
    assert page.is_visible("#error")
    # The text before it is the reply's, shown once (its thinking apart), not again here.
    assert error["code"] in shown and "stops where it failed" in shown and "Half" not in shown
    assert page.text_content("#answer") == "Half an "
    assert json.loads(page.text_content("#metadata") or "")["trace_id"] == error["traceId"]
    assert page.text_content("#status") == "failed"


def test_an_error_before_the_stream_is_shown(page: Page, fake: FakeUpstream) -> None:
    send(page, "")
    events = events_when_done(page)
    [error] = of_type(events, "error")
    assert error["status"] == 400
    assert error["code"] == "invalid_request"
    assert "user_input" in error["error"]
    assert error["traceId"]
    assert of_type(events, "open")[0]["header"] == error["traceId"]  # exposed on errors too
    shown = page.text_content("#error") or ""
    assert "invalid_request (HTTP 400)" in shown
    assert fake.requests == []


def test_stop_closes_the_stream_and_the_service_stops_the_model(
    page: Page, fake: FakeUpstream
) -> None:
    fake.push(Script(tokens=["word "] * 100, interval=0.1))
    send(page, "Talk for a long time")
    page.wait_for_function("() => document.getElementById('answer').textContent.length > 0")
    page.click("#stop")
    events = events_when_done(page)
    assert of_type(events, "end")[0]["outcome"] == "aborted"
    assert of_type(events, "error") == [] and of_type(events, "final") == []
    assert page.text_content("#status") == "stopped"
    assert fake.requests[-1].client_closed.wait(5), "the upstream request was not closed"
    assert len(fake.requests) == 1


def test_non_ascii_text_survives_both_ways(page: Page, fake: FakeUpstream) -> None:
    text = "Olé 😀 line\u2028sep para\u2029end nel\u0085x 漢字"
    fake.push(Script(echo=True))
    send(page, text)
    events = events_when_done(page)
    [final] = of_type(events, "final")
    assert final["answer"] == f"You said: {text}"
    assert "".join(chunk["text"] for chunk in of_type(events, "chunk")) == final["answer"]
    assert page.text_content("#answer") == final["answer"]


def test_heartbeats_before_the_first_token_are_ignored(
    page: Page, fake: FakeUpstream, service: str
) -> None:
    slow = Script(tokens=["After ", "a ", "wait."], ttft=HEARTBEAT * 2.5)
    fake.push(slow, slow)
    send(page, "Take your time")
    # The same reply read raw beside it (the browser's view of the body is the client's):
    # the service did send heartbeats.
    raw = httpx.post(service + PATH, json={"user_input": "Take your time"}, timeout=10).text
    assert ": ping" in raw and raw.endswith("data: [DONE]\n\n")
    events = events_when_done(page)
    assert of_type(events, "error") == []
    assert of_type(events, "final")[0]["answer"] == "After a wait."
    assert page.text_content("#answer") == "After a wait."
    assert page.text_content("#status") == "done"


def test_an_origin_the_service_does_not_allow_gets_nothing(
    browser: Browser, demo: str, fake: FakeUpstream
) -> None:
    """The other tests pass because CORS allows the demo's origin, not because it is same-origin."""
    with running_service({"CORS_ORIGINS": "https://other.example"}) as running:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{demo}/")
            page.fill("#url", running.url + PATH)
            send(page, "Hello?")
            events = events_when_done(page)
        finally:
            context.close()
    [error] = of_type(events, "error")
    assert error["code"] == "network_error" and error["status"] == 0
    assert fake.requests == []  # the preflight was refused, so the POST never went out


def test_the_client_in_node() -> None:
    """clients/js/vac-stream.test.mjs: SSE cut at every byte, CR/LF pairs, comments, errors."""
    node = shutil.which("node")
    assert node, "node not found: Node.js 20 is needed by the tests (README)"
    result = subprocess.run(
        [node, "--test", "clients/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# fail 0$", result.stdout, re.M), result.stdout
