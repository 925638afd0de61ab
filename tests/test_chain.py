"""The provider chain's fall-through and commit rules, with two real upstreams on loopback.

Two Anthropic-speaking fake servers stand in for two providers, so the rules
are exercised over real HTTP without waiting for the other provider modules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import time
from collections.abc import Callable, Generator, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from assistant import aio
from assistant.chain import (
    Attempt,
    Chain,
    ChainCrashed,
    ChainFailed,
    ChainSucceeded,
    Chunk,
    Item,
)
from assistant.config import ProviderSettings, Settings, Timeouts
from assistant.outbox import Outbox
from assistant.providers.anthropic import AnthropicProvider
from assistant.providers.base import Prompt, ProviderError
from assistant.reply import ClientGone, Refused, Reply
from assistant.request import AssistantRequest, Turn
from assistant.store import Author
from assistant.thinking import ThinkingSplitter
from assistant.tracing import RequestLog
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import log_lines, sse_events
from .provider_cases import CASES, ProviderCase
from .provider_support import (
    PROMPT,
    anthropic_event,
    anthropic_text_stream,
    run_chain,
)


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with (
        FakeUpstream(default=Script(text="from first")) as first,
        FakeUpstream(default=Script(text="from second")) as second,
    ):
        yield first, second


def _provider(upstream: FakeUpstream, name: str) -> AnthropicProvider:
    settings = ProviderSettings.from_env({"ANTHROPIC_BASE_URL": upstream.url}, "anthropic")
    provider = AnthropicProvider(settings, "test-key")
    provider.name = name  # two instances of one wire format, told apart in attempts
    return provider


def _reply(
    upstreams,
    *,
    streaming: bool,
    env: dict[str, str] | None = None,
    on_end: Callable[[], None] = lambda: None,
    client_gone: Callable[[], bool] = lambda: False,
) -> Reply:
    first, second = upstreams
    return Reply(
        AssistantRequest(assistant_id="chain-test", user_input="hi"),
        trace_id="trace-chain",
        settings=Settings.from_env({"HEARTBEAT_SECONDS": "5", **(env or {})}),
        providers=[_provider(first, "primary"), _provider(second, "secondary")],
        store=None,
        author=Author(None, None, None),
        log=RequestLog("trace-chain"),
        streaming=streaming,
        on_end=on_end,
        client_gone=client_gone,
    )


def _stream(reply: Reply) -> list:
    reply.start()
    return sse_events(b"".join(cast("Iterator[bytes]", reply.sse_stream())))


@pytest.mark.parametrize("fail", ["500", "429", "error_event", "empty", "no_text"])
def test_failure_before_first_chunk_falls_through_silently(upstreams, fail: str) -> None:
    first, _ = upstreams
    first.push(Script(fail=fail))
    events = _stream(_reply(upstreams, streaming=True))
    assert all("error" not in event for event in events if isinstance(event, dict))
    final = events[-2]
    assert final["answer"] == "from second"
    assert final["metadata"]["provider"] == "secondary"
    outcomes = [(a["name"], a["outcome"]) for a in final["metadata"]["attempts"]]
    assert outcomes[0][0] == "primary" and outcomes[0][1] != "ok"
    assert outcomes[1] == ("secondary", "ok")


@pytest.mark.parametrize(
    "script, outcome",
    [
        (Script(tokens=["\n", "Hello"], fail_after=1, fail_mode="error_event"), "upstream_error"),
        (Script(tokens=["\n\n", " "]), "upstream_empty"),
        (
            Script(thinking=["\n"], tokens=["Hello"], fail_after=1, fail_mode="error_event"),
            "upstream_error",
        ),
        (Script(thinking=["\n\n"], tokens=[" "]), "upstream_empty"),
        # Characters that show nothing are blanks too (a reviewer's: the answer was one).
        (Script(tokens=["\u200b", "\ufeff"]), "upstream_empty"),
    ],
    ids=[
        "blank-then-an-error",
        "blanks-alone",
        "blank-thinking-then-an-error",
        "blank-thinking",
        "invisible-alone",
    ],
)
def test_blanks_before_a_failure_or_an_end_are_no_first_chunk(
    upstreams, script: Script, outcome: str
) -> None:
    """A stream committed on a "\n": the next provider was never asked, and the user
    got an error, or an empty reply saved as complete (a JSON caller got the next one)."""
    first, _ = upstreams
    first.push(script)
    events = _stream(_reply(upstreams, streaming=True))
    assert "".join(event["chunk"] for event in events[:-2] if "chunk" in event) == "from second"
    outcomes = [(a["name"], a["outcome"]) for a in events[-2]["metadata"]["attempts"]]
    assert outcomes == [("primary", outcome), ("secondary", "ok")]


def test_blanks_before_text_go_out_with_it(upstreams) -> None:
    first, _ = upstreams
    first.push(Script(tokens=["\n", " ", "Hi", "\n"]))
    events = _stream(_reply(upstreams, streaming=True))
    chunks = "".join(event["chunk"] for event in events[:-2] if "chunk" in event)
    assert chunks == events[-2]["answer"] == "\n Hi\n"
    assert events[-2]["metadata"]["provider"] == "primary"


def test_blank_thinking_before_text_goes_out_with_it_in_its_tags(upstreams) -> None:
    first, _ = upstreams
    first.push(Script(thinking=["\n", "Hmm."], tokens=["Hi"]))
    events = _stream(_reply(upstreams, streaming=True))
    chunks = "".join(event["chunk"] for event in events[:-2] if "chunk" in event)
    assert chunks == events[-2]["answer"] == "<thinking>\nHmm.</thinking>Hi"
    assert events[-2]["metadata"]["thinking_content"] == "Hmm."


def test_first_chunk_timeout_falls_through(upstreams) -> None:
    first, _ = upstreams
    first.push(Script(fail="hang"))
    events = _stream(_reply(upstreams, streaming=True, env={"FIRST_CHUNK_TIMEOUT_SECONDS": "0.3"}))
    assert events[-2]["answer"] == "from second"
    assert events[-2]["metadata"]["attempts"][0]["outcome"] == "upstream_timeout"
    assert first.requests[0].client_closed.wait(timeout=3)  # the hung request was closed


def test_no_next_provider_is_asked_once_the_client_left(upstreams) -> None:
    """A client that left while the first provider failed: the next was sent a request
    paid for nobody, cancelled a moment later (a reviewer)."""
    first, second = upstreams
    first.push(Script(fail="500"))
    attempts: list[str] = []
    chain = Chain(
        [_provider(first, "primary"), _provider(second, "secondary")],
        Prompt(system=None, turns=(Turn("user", "hi"),)),
        Timeouts(connect=1, first_chunk=2, idle=2),
        lambda item: None,
        on_attempt=lambda attempt, error: attempts.append(attempt.provider),
        client_gone=lambda: True,
    )
    with pytest.raises(concurrent.futures.CancelledError):  # as when its reply ends it
        aio.submit(chain.run()).result(timeout=10)
    assert chain.finished.is_set()
    assert attempts == ["primary"] and len(first.requests) == 1 and second.requests == []


@pytest.mark.parametrize("streaming", [False, True])
def test_a_reply_whose_client_left_before_the_next_provider_ends(
    upstreams, streaming: bool
) -> None:
    """The chain ends with no outcome when it finds the client gone before a next
    provider; the reply waited for one for ever, its slot held (a reviewer's, a client
    gone while the first provider failed)."""
    first, second = upstreams
    first.push(Script(fail="500"))
    reply = _reply(upstreams, streaming=streaming, client_gone=lambda: True)
    reply.start()
    if streaming:  # before its head: a 499 (README "Client gone")
        ended = concurrent.futures.ThreadPoolExecutor(1).submit(lambda: list(reply.sse_stream()))
        refused = ended.result(timeout=10)[0]
        assert isinstance(refused, Refused) and refused.status == 499
    else:
        ended = concurrent.futures.ThreadPoolExecutor(1).submit(reply.json_answer)
        with pytest.raises(ClientGone):
            ended.result(timeout=10)
    assert second.requests == []


def test_a_failure_preparing_the_prompt_is_left_to_the_run(upstreams) -> None:
    """What a provider works out before the run (its response schema) is worked out
    again in it, where a failure is the reply's to report: it does not break the request
    on its thread."""
    first, _ = upstreams
    provider = _provider(first, "primary")

    def fails(prompt: Prompt) -> str | None:
        raise RuntimeError("a bug in a schema's check")

    provider.schema_left_out = fails  # type: ignore[method-assign]
    chain = Chain([provider], Prompt(None, (Turn("user", "hi"),)), Timeouts(1, 1, 1), print)
    chain.prepare()  # no exception


def test_unreachable_provider_falls_through() -> None:
    with FakeUpstream(default=Script(text="from second")) as second:
        dead = FakeUpstream().start()
        dead.stop()  # nothing listens on its port any more
        events = _stream(_reply((dead, second), streaming=True))
    assert events[-2]["answer"] == "from second"
    assert events[-2]["metadata"]["attempts"][0]["outcome"] == "upstream_unreachable"


def test_no_fall_through_after_the_first_chunk(upstreams) -> None:
    first, second = upstreams
    first.push(Script(tokens=["partial ", "text ", "more"], fail_after=2, fail_mode="error_event"))
    events = _stream(_reply(upstreams, streaming=True))
    assert events[:2] == [{"chunk": "partial "}, {"chunk": "text "}]
    error = events[2]
    assert error["code"] == "upstream_error"
    assert error["partial"] == "partial text "
    assert events[3:] == ["[DONE]"]
    assert second.requests == []  # the user would have seen text twice


def test_every_provider_failing_before_text_is_reported_with_attempts(upstreams) -> None:
    first, second = upstreams
    first.push(Script(fail="500"))
    second.push(Script(fail="error_event"))
    reply = _reply(upstreams, streaming=True)
    reply.start()
    refused = next(reply.sse_stream())
    assert isinstance(refused, Refused) and refused.status == 502
    body = refused.payload
    assert body["code"] == "providers_failed"
    assert [(a["name"], a["outcome"]) for a in body["attempts"]] == [
        ("primary", "upstream_status"),
        ("secondary", "upstream_error"),
    ]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_client_found_gone_once_the_chain_has_ended_is_given_the_whole_reply(
    upstreams, streaming: bool
) -> None:
    """The client check that ran as the chain ended took the reply for cut off: saved
    incomplete, its end told as client_gone (a reviewer's, a half-closing client). Here
    the check waits for the chain's end: a reply that ended is concluded whole."""
    first, _ = upstreams
    first.push(Script(tokens=[f"w{n} " for n in range(10)], ttft=0.5, interval=0.1))
    replies: list[Reply] = []

    def gone_once_ended() -> bool:
        assert replies[0]._chain.finished.wait(timeout=5)
        time.sleep(0.05)  # its outcome handed on
        return True

    reply = _reply(upstreams, streaming=streaming, client_gone=gone_once_ended)
    replies.append(reply)
    if streaming:
        events = _stream(reply)
        final = events[-2]
        assert events[-1] == "[DONE]" and "code" not in final
        assert final["answer"] == "".join(f"w{n} " for n in range(10))
    else:
        reply.start()
        status, body = reply.json_answer()
        assert (status, body["answer"]) == (200, "".join(f"w{n} " for n in range(10)))


def test_json_caller_falls_through_even_after_text(upstreams) -> None:
    first, second = upstreams
    first.push(Script(tokens=["doomed ", "text"], fail_after=1, fail_mode="cut"))
    second.push(Script(tokens=["from second"], ttft=0.3))
    reply = _reply(upstreams, streaming=False)
    reply.start()
    status, body = reply.json_answer()
    assert status == 200
    assert body["answer"] == "from second"  # the failed attempt's text is dropped
    assert [a["outcome"] for a in body["metadata"]["attempts"]] == ["upstream_incomplete", "ok"]
    # ...and so is the time of its first chunk: the answer's came from the second.
    assert body["metadata"]["timing"]["first_chunk_ms"] >= 300


@pytest.mark.parametrize(
    "empty",
    [
        Script(tokens=[], thinking=["Weighing ", "it."], thinking_mode="native"),
        Script(tokens=[], thinking=["Weighing ", "it."], thinking_mode="inline"),
        Script(tokens=["<think>Weighing it.</think>", " \n "]),
    ],
    ids=["native-thinking", "inline-thinking", "thinking-and-blanks"],
)
def test_json_caller_is_given_the_next_answer_after_one_of_thinking_alone(
    upstreams, empty: Script
) -> None:
    """A reviewer found a 200 whose answer was only a thinking block, the next provider
    never asked: a JSON caller is shown nothing before the end, so it is an empty reply."""
    first, second = upstreams
    first.push(empty)
    second.push(Script(tokens=["from second"]))
    reply = _reply(upstreams, streaming=False)
    reply.start()
    status, body = reply.json_answer()
    assert status == 200
    assert body["answer"] == "from second"
    assert [a["outcome"] for a in body["metadata"]["attempts"]] == ["upstream_empty", "ok"]


def test_json_caller_given_thinking_alone_by_every_provider_gets_it_closed(upstreams) -> None:
    for upstream in upstreams:
        upstream.push(Script(tokens=[], thinking=["Weighing ", "it."], thinking_mode="native"))
    reply = _reply(upstreams, streaming=False)
    reply.start()
    status, body = reply.json_answer()
    assert (status, body["code"]) == (502, "providers_failed")
    assert body["partial"] == "<thinking>Weighing it.</thinking>"  # its block closed
    assert [a["outcome"] for a in body["attempts"]] == ["upstream_empty", "upstream_empty"]


@pytest.mark.parametrize(
    ("script", "env"),
    [
        (dict(fail_after=2, fail_mode="error_event"), {}),
        (dict(fail_after=2, fail_mode="cut"), {}),
        (dict(interval=1.5), {"MAX_REPLY_SECONDS": "1"}),
    ],
    ids=["error-event", "cut", "reply-too-long"],
)
def test_a_json_partial_cut_while_thinking_has_its_block_closed(
    upstreams, script: dict[str, Any], env: dict[str, str]
) -> None:
    """A reviewer found `<thinking>Weighing it.` in a 502's partial: shown whole, not as
    it streamed, a reply cut while thinking reads as one whose thinking ended."""
    for upstream in upstreams:
        thinking = ["Weighing ", "it.", "More."]
        upstream.push(Script(tokens=["x"], thinking=thinking, thinking_mode="native", **script))
    reply = _reply(upstreams, streaming=False, env=env)
    reply.start()
    status, body = reply.json_answer()
    assert status in (502, 504)
    assert body["partial"].startswith("<thinking>Weighing ")
    assert body["partial"].endswith("</thinking>")


def test_json_caller_given_thinking_and_a_call_gets_the_call(upstreams) -> None:
    first, second = upstreams
    call = {"name": "weather", "args": {"city": "Oslo"}}
    first.push(Script(tokens=[], thinking=["Look it up."], tool_calls=[call]))
    reply = _reply(upstreams, streaming=False)
    reply.start()
    status, body = reply.json_answer()
    assert status == 200 and second.requests == []
    assert [c["name"] for c in body["metadata"]["tools_to_use"]] == ["weather"]


def test_a_stream_shows_an_answer_of_thinking_alone_as_it_came(upstreams) -> None:
    first, second = upstreams
    first.push(Script(tokens=[], thinking=["Weighing ", "it."], thinking_mode="native"))
    events = _stream(_reply(upstreams, streaming=True))
    assert events[-2]["answer"] == "<thinking>Weighing it.</thinking>"  # shown: committed
    assert second.requests == []


@pytest.mark.parametrize("told", ["before its start", "at its start"])
def test_a_reply_told_to_stop_before_its_chain_began_still_stops(upstreams, told: str) -> None:
    """A stopping worker tells each reply once: one told before its chain's first step
    (in `start()`, say) ended as if never told (a reviewer's race: it ran on to its end,
    or, a stream, to its abandon with no terminal frame)."""
    first, _ = upstreams
    first.push(Script(tokens=["slow ", "reply"], ttft=1, interval=1))
    reply = _reply(upstreams, streaming=False)
    if told == "before its start":
        reply.stop_early()
        reply.start()
    else:
        reply.start()
        reply.stop_early()
    status, body = reply.json_answer()
    assert (status, body["code"]) == (503, "overloaded")
    if told == "before its start":  # no provider is asked for a reply already ended
        assert first.requests == [] and body["attempts"] == []


def test_json_caller_gets_502_when_all_fail(upstreams) -> None:
    first, second = upstreams
    first.push(Script(fail="500"))
    second.push(Script(tokens=["a", "b"], fail_after=1, fail_mode="error_event"))
    reply = _reply(upstreams, streaming=False)
    reply.start()
    status, body = reply.json_answer()
    assert status == 502
    assert body["code"] == "providers_failed"
    assert len(body["attempts"]) == 2
    assert body["partial"] == "a"  # what arrived before the last failure is reported


def test_a_json_reply_every_provider_failed_reports_its_kept_texts_usage(upstreams) -> None:
    """The text kept (the last that came, saved incomplete) is reported with its usage
    and model, not with none (a first version of clearing a failed attempt's report
    cleared it) nor with a later attempt's."""
    first, second = upstreams
    first.push(Script(tokens=["a ", "b ", "c"], fail_after=2, fail_mode="cut", input_tokens=55))
    second.push(Script(fail="no_text", input_tokens=7))
    items: list[Item] = []
    providers = [_provider(first, "primary"), _provider(second, "secondary")]
    chain = Chain(providers, PROMPT, Timeouts(1, first_chunk=3, idle=3), items.append,
                  commit_on_first_chunk=False)  # fmt: skip
    aio.submit(chain.run()).result(timeout=20)
    failed = items[-1]
    assert isinstance(failed, ChainFailed) and not failed.committed
    report = failed.report
    assert (report.provider, report.usage.input_tokens, report.stop_reason) == ("primary", 55, None)


def test_a_reply_out_of_time_after_its_answer_ended_has_no_stop_reason(upstreams) -> None:
    """The answer's end came while the reply had no room (a slow client), and the reply's
    time ran out first: its error frame said stop_reason end_turn (a reviewer)."""
    first, _ = upstreams
    first.push(Script(tokens=["a", "b", "c"]))
    asked: list[int] = []
    full: list[Any] = []

    def room() -> Any:
        asked.append(1)
        if len(asked) < 3:
            return None
        full.append(full[0] if full else asyncio.get_running_loop().create_future())
        return full[-1]

    items: list[Item] = []
    timeouts = Timeouts(1, first_chunk=3, idle=3, reply=1)
    chain = Chain([_provider(first, "primary")], PROMPT, timeouts, items.append, room=room)
    aio.submit(chain.run()).result(timeout=20)
    failed = items[-1]
    assert isinstance(failed, ChainFailed) and failed.error is not None
    assert failed.error.code == "reply_too_long" and failed.report.stop_reason is None


def test_a_body_the_parser_chokes_on_is_that_providers_failure(upstreams) -> None:
    first, _ = upstreams
    malformed = (
        b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","delta":"not an object"}\n\n'
    )
    first.push(Script(raw=[malformed]))
    events = _stream(_reply(upstreams, streaming=True))
    assert events[-2]["answer"] == "from second"
    assert events[-2]["metadata"]["attempts"][0]["outcome"] == "upstream_protocol"


@pytest.fixture
def full_backlog() -> Iterator[SimpleNamespace]:
    """A port whose accept queue is full: the kernel drops new SYNs, so connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}")  # all _provider() needs
    for sock in [*fillers, listener]:
        sock.close()


def test_connect_timeout_falls_through(full_backlog, upstreams, capsys) -> None:
    _, second = upstreams
    env = {"CONNECT_TIMEOUT_SECONDS": "0.3", "FIRST_CHUNK_TIMEOUT_SECONDS": "10"}
    events = _stream(_reply((full_backlog, second), streaming=True, env=env))
    assert events[-2]["answer"] == "from second"
    assert events[-2]["metadata"]["attempts"][0]["outcome"] == "upstream_timeout"
    logged = log_lines(capsys.readouterr().out)
    failed = [line["detail"] for line in logged if line["message"] == "provider.failed"]
    assert failed == ["connect timeout"]


def test_a_bug_in_the_chain_still_ends_the_reply(upstreams) -> None:
    """Whatever breaks inside the chain, the reply gets a terminal item, never silence."""
    first, _ = upstreams

    def broken_hook(attempt: Attempt, error: ProviderError | None) -> None:
        raise RuntimeError("a bug of ours")

    items: list = []
    chain = Chain(
        providers=[_provider(first, "primary")],
        prompt=Prompt(system=None, turns=(Turn("user", "hi"),)),
        timeouts=Settings.from_env({}).timeouts,
        emit=items.append,
        on_attempt=broken_hook,
    )
    aio.submit(chain.run()).result(timeout=10)
    assert isinstance(items[-1], ChainCrashed)
    assert chain.finished.is_set()


def test_a_bug_after_text_ends_the_stream_with_an_internal_error_frame(upstreams) -> None:
    reply = _reply(upstreams, streaming=True)

    def broken_hook(attempt: Attempt, error: ProviderError | None) -> None:
        raise RuntimeError("a bug of ours")

    reply._chain.on_attempt = broken_hook  # the one seam: a bug where no provider is at fault
    events = _stream(reply)
    assert events[0] == {"chunk": "from "}
    assert events[-2]["code"] == "internal_error"
    assert events[-2]["partial"] == "from first"
    assert "bug" not in events[-2]["error"]
    assert events[-1] == "[DONE]"


def test_a_refused_reply_gives_its_place_back_before_its_answer_goes_out(upstreams) -> None:
    """A 502 is whole on the wire before the server closes the response: were the user's
    slot given back only then, a retry right after it could meet a 429."""
    first, second = upstreams
    first.push(Script(fail="500"))
    second.push(Script(fail="500"))
    released: list[int] = []
    reply = _reply(upstreams, streaming=True, on_end=lambda: released.append(1))
    reply.start()
    stream = reply.sse_stream()
    refused = next(stream)
    assert isinstance(refused, Refused) and refused.status == 502
    assert released == [1]
    stream.close()
    reply.close()
    assert released == [1, 1]  # the slot's release is what makes a second one harmless


@pytest.mark.parametrize("marked_done", [False, True], ids=["before-saving", "after-saving"])
def test_a_bug_before_the_status_is_decided_is_a_500_with_nothing_shown(
    upstreams, capsys, marked_done: bool
) -> None:
    first, second = upstreams
    first.push(Script(fail="500"))
    second.push(Script(fail="500"))
    reply = _reply(upstreams, streaming=True)

    def broken_concluding(
        item: Any, beat: float | None, within: float | None = None
    ) -> Generator[None, None, dict]:
        reply._done = marked_done  # the real one marks the reply done first, then saves
        raise ValueError("a bug of ours")
        yield  # a generator, as the real one

    reply._concluding = broken_concluding  # the one seam: a bug in deciding the refusal
    reply.start()
    refused = next(reply.sse_stream())
    assert isinstance(refused, Refused) and refused.status == 500
    assert refused.payload == {
        "error": "The request failed on our side.",
        "code": "internal_error",
        "trace_id": "trace-chain",
    }
    logged = [line for line in capsys.readouterr().out.splitlines() if "reply.crashed" in line]
    assert len(logged) == 1 and "ValueError: a bug of ours" in logged[0]


def test_a_bug_on_the_reply_side_stops_the_upstream_request(upstreams) -> None:
    """The reply is over: a provider still streaming is not read on for nothing."""
    first, _ = upstreams
    first.push(Script(tokens=["more "] * 100, interval=0.05))  # 5 s of text
    reply = _reply(upstreams, streaming=True)

    def broken_add(text: str) -> None:
        raise ValueError("a bug of ours")

    reply._add = broken_add  # the one seam: a bug while turning a chunk into a frame
    assert _stream(reply)[-2]["code"] == "internal_error"
    assert first.requests[0].client_closed.wait(timeout=2)


def test_a_bug_on_the_reply_side_ends_the_stream_with_one_logged_error(upstreams, capsys) -> None:
    reply = _reply(upstreams, streaming=True)

    def broken_add(text: str) -> None:
        raise ValueError("a bug of ours")

    reply._add = broken_add  # the one seam: a bug while turning a chunk into a frame
    events = _stream(reply)
    assert events[-2]["code"] == "internal_error"
    assert events[-1] == "[DONE]"
    logged = [line for line in capsys.readouterr().out.splitlines() if "reply.crashed" in line]
    assert len(logged) == 1 and "ValueError: a bug of ours" in logged[0]


def test_a_bug_while_concluding_still_ends_the_stream_with_an_error_frame(
    upstreams, capsys
) -> None:
    reply = _reply(upstreams, streaming=True)
    concluding = reply._concluding
    concluded: list[object] = []

    def broken_concluding(
        item: Any, beat: float | None, within: float | None = None
    ) -> Generator[None, None, dict]:
        concluded.append(item)
        yield from concluding(item, beat)  # it saves, then a bug before its payload is out
        raise ValueError("a bug of ours")

    reply._concluding = broken_concluding  # the one seam: a bug in building the terminal frame
    events = _stream(reply)
    assert events[0] == {"chunk": "from "}
    assert events[-2]["code"] == "internal_error"
    assert events[-2]["partial"] == "from first"
    assert events[-2]["metadata"]["trace_id"]
    assert events[-1] == "[DONE]"
    assert len(concluded) == 1  # concluded (and saved) once, not again for the crash
    logged = [line for line in capsys.readouterr().out.splitlines() if "reply.crashed" in line]
    assert len(logged) == 1 and "ValueError: a bug of ours" in logged[0]


def test_what_an_answer_cost_is_kept_when_its_reply_ends_with_chunks_waiting(
    fake: FakeUpstream,
) -> None:
    """The answer's end came in the read whose chunks wait for room, and the reply is
    over before they went out (its client left): its usage and stop reason are still
    the chain's, for the record."""
    usage = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    usage["usage"] = {"output_tokens": 42}
    body = anthropic_text_stream(PIECES).replace(
        b'{"type": "message_delta", "delta": {"stop_reason": "end_turn"}}',
        json.dumps(usage).encode(),
    )
    assert b'"output_tokens": 42' in body
    fake.push(Script(raw=[body]))
    outbox = Outbox(limit_chars=10)
    timeouts = Timeouts(connect=5, first_chunk=5, idle=5, reply=30)
    chain = Chain([_provider(fake, "only")], PROMPT, timeouts, outbox.put, room=outbox.room)
    running = aio.submit(chain.run())
    time.sleep(0.5)  # two chunks in the outbox, the rest waiting for room
    running.cancel()  # the client left
    assert chain.finished.wait(5)
    report = chain.report()
    assert report.usage.output_tokens == 42
    assert report.stop_reason == "end_turn"


def test_a_gemini_answers_cost_survives_its_reply_ending_while_chunks_wait(
    fake: FakeUpstream,
) -> None:
    """As above, for Gemini, whose end is the body's end and no marker: the reply cancelled
    while the answer's last chunks wait for room keeps the answer's stop reason, not the
    none of a failure's report (a reviewer's reading of Decoder.salvage)."""
    pieces = [{"candidates": [{"content": {"parts": [{"text": f"piece{i} "}]}}]} for i in range(9)]
    pieces.append(
        {
            "candidates": [{"content": {"parts": [{"text": "end"}]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 10},
        }
    )
    body = b"".join(b"data: " + json.dumps(piece).encode() + b"\r\n\r\n" for piece in pieces)
    fake.push(Script(raw=[body]))  # one write: the end comes in the read that fills the reply
    gemini = next(case for case in CASES if case.name == "gemini")
    outbox = Outbox(limit_chars=10)
    timeouts = Timeouts(connect=5, first_chunk=5, idle=5, reply=30)
    chain = Chain([gemini.provider(fake.url)], PROMPT, timeouts, outbox.put, room=outbox.room)
    running = aio.submit(chain.run())
    time.sleep(0.5)  # the first chunks in the outbox, the rest waiting for room
    running.cancel()  # the client left
    assert chain.finished.wait(5)
    report = chain.report()
    assert (report.stop_reason, report.usage.output_tokens) == ("max_tokens", 10)


def _relayed_to_a_late_reader(fake: FakeUpstream, body: bytes, items: int) -> tuple[list, list]:
    """A chain over `body` (sent in one write) into an outbox of 10 characters whose
    reader starts late: what the chain had put before the reader started, and the
    `items` the reader then took."""
    fake.push(Script(raw=[body]))
    outbox = Outbox(limit_chars=10)
    put: list[Item] = []

    def emit(item: Item) -> None:
        put.append(item)
        outbox.put(item)

    timeouts = Timeouts(connect=5, first_chunk=5, idle=5, reply=30)
    chain = Chain([_provider(fake, "only")], PROMPT, timeouts, emit, room=outbox.room)
    done = aio.submit(chain.run())
    time.sleep(0.5)
    before = list(put)
    taken = [outbox.get(timeout=5) for _ in range(items)]
    done.result(timeout=5)
    return before, taken


PIECES = [f"{n:04d}." for n in range(20)]


def test_a_full_reply_stops_the_relay_between_chunks_of_one_read(fake: FakeUpstream) -> None:
    """The reply's room is asked before each chunk, as when chunks came one read at a
    time: twenty chunks in one upstream read fill a 10-character outbox with two, and
    the others wait (none lost, none out of order) until the reader takes some."""
    before, taken = _relayed_to_a_late_reader(fake, anthropic_text_stream(PIECES), 21)
    assert before == [Chunk("0000."), Chunk("0001.")]
    assert [item.text for item in taken[:20] if isinstance(item, Chunk)] == PIECES
    assert isinstance(taken[20], ChainSucceeded)


def test_an_error_after_chunks_waiting_for_room_comes_after_them(fake: FakeUpstream) -> None:
    """An upstream error in the same read as chunks the reply has no room for yet: the
    chunks go out as room allows, all of them, and the failure after them."""
    error = anthropic_event("error", {"type": "error", "error": {"type": "overloaded_error"}})
    body = anthropic_text_stream(PIECES).split(b"event: content_block_stop")[0] + error
    before, taken = _relayed_to_a_late_reader(fake, body, 21)
    assert before == [Chunk("0000."), Chunk("0001.")]
    assert [item.text for item in taken[:20] if isinstance(item, Chunk)] == PIECES
    assert isinstance(taken[20], ChainFailed) and taken[20].committed
    assert taken[20].error is not None and taken[20].error.code == "upstream_error"


def _anthropic_block(index: int, content: dict[str, object], delta: dict[str, object]) -> bytes:
    start = {"type": "content_block_start", "index": index, "content_block": content}
    step = {"type": "content_block_delta", "index": index, "delta": delta}
    stop = {"type": "content_block_stop", "index": index}
    return b"".join(
        anthropic_event(name, data)
        for name, data in (
            ("content_block_start", start),
            ("content_block_delta", step),
            ("content_block_stop", stop),
        )
    )


def _lines(prefix: str, items: list[Any], end: str = "\n") -> bytes:
    return "".join(f"{prefix}{json.dumps(item)}{end}" for item in items).encode()


def _openai(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _gemini(part: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}}
    return {"candidates": [candidate | ({"finishReason": finish} if finish else {})]}


def _ollama(message: dict[str, Any], done: bool = False) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": "", **message}, "done": done} | (
        {"done_reason": "stop"} if done else {}
    )


# Thinking, a call, more thinking, then text: each provider's stream of it.
_THINKING, _OSLO = {"type": "thinking"}, {"city": "Oslo"}
_CALLED_BETWEEN_THOUGHTS = {
    "anthropic": b"".join(
        [
            anthropic_event("message_start", {"type": "message_start", "message": {"model": "m"}}),
            _anthropic_block(0, _THINKING, {"type": "thinking_delta", "thinking": "first"}),
            _anthropic_block(
                1,
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
                {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'},
            ),
            _anthropic_block(2, _THINKING, {"type": "thinking_delta", "thinking": "second"}),
            _anthropic_block(3, {"type": "text"}, {"type": "text_delta", "text": "done"}),
            anthropic_event("message_delta", {"type": "message_delta", "delta": {}}),
            anthropic_event("message_stop", {"type": "message_stop"}),
        ]
    ),
    # An OpenAI-compatible server's call arrives whole only when its choice finishes, after
    # the thinking that followed it: its first fragment ends the block (a reviewer found the
    # two blocks run together, "firstsecond").
    "openai": _lines(
        "data: ",
        [
            _openai({"reasoning_content": "first"}),
            _openai({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "weather", "arguments": ""}}]}),
            _openai({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]}),
            _openai({"reasoning_content": "second"}),
            _openai({"content": "done"}),
            _openai({}, finish="tool_calls"),
        ],
        end="\n\n",
    )
    + b"data: [DONE]\n\n",
    "gemini": _lines(
        "data: ",
        [
            _gemini({"text": "first", "thought": True}),
            _gemini({"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}),
            _gemini({"text": "second", "thought": True}),
            _gemini({"text": "done"}, finish="STOP"),
        ],
        end="\r\n\r\n",
    ),
    "ollama": _lines(
        "",
        [
            _ollama({"thinking": "first"}),
            _ollama({"tool_calls": [{"function": {"name": "weather", "arguments": _OSLO}}]}),
            _ollama({"thinking": "second"}),
            _ollama({"content": "done"}),
            _ollama({}, done=True),
        ],
    ),
}  # fmt: skip


def test_thinking_between_pieces_of_a_calls_arguments_is_one_block(fake: FakeUpstream) -> None:
    """An OpenAI-compatible server may stream reasoning between the pieces of a call's
    arguments: only the call's beginning ends a block (each piece did: "Query " and
    "is cats." saved as two blocks, a reviewer)."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search"}}
    pieces = [
        _openai({"reasoning_content": "I should "}),
        _openai({"tool_calls": [call | {"function": {"name": "search", "arguments": ""}}]}),
        _openai({"reasoning_content": "Query "}),
        _openai({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}),
        _openai({"reasoning_content": "is cats."}),
        _openai({"tool_calls": [{"index": 0, "function": {"arguments": '"cats"}'}}]}),
        _openai({}, finish="tool_calls"),
    ]
    fake.push(Script(raw=[_lines("data: ", pieces, end="\n\n") + b"data: [DONE]\n\n"]))
    openai = next(case for case in CASES if case.name == "openai")
    run = run_chain(
        [openai.provider(fake.url)], Timeouts(connect=5, first_chunk=5, idle=5, reply=30)
    )
    splitter = ThinkingSplitter()
    for item in run.items:
        if isinstance(item, Chunk):
            splitter.feed(item.text)
    splitter.finish()
    assert splitter.thinking == "I should\n\nQuery is cats."


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_thinking_on_either_side_of_a_tool_call_is_two_blocks(
    fake: FakeUpstream, case: ProviderCase
) -> None:
    """Native thinking, a tool call, more thinking (interleaved thinking): the call
    closes the first block, so the two are not run together, in the stream or in the
    saved thinking. Its close tag goes with the next piece: it went alone, as a chunk
    of its own, which the API's docs say never happens (a reviewer)."""
    fake.push(Script(raw=[_CALLED_BETWEEN_THOUGHTS[case.name]]))
    timeouts = Timeouts(connect=5, first_chunk=5, idle=5, reply=30)
    run = run_chain([case.provider(fake.url)], timeouts)
    items = [item.text if isinstance(item, Chunk) else type(item).__name__ for item in run.items]
    assert items[-1] == "ChainSucceeded" and items.count("ToolCall") == 1
    texts = [item for item in items if item not in ("ToolCall", "ChainSucceeded")]
    assert texts == ["<thinking>first", "</thinking><thinking>second", "</thinking>done"]
    splitter = ThinkingSplitter()
    for text in texts:
        splitter.feed(text)
    splitter.finish()
    assert (splitter.thinking, splitter.content) == ("first\n\nsecond", "done")


def test_an_answer_of_a_format_character_that_prints_is_an_answer(upstreams) -> None:
    """The end of ayah (U+06DD) is a format character that shows: an answer of one was
    taken as empty once the chain judged blanks by what shows (a reviewer's)."""
    first, _ = upstreams
    first.push(Script(tokens=["\u06dd"]))
    events = _stream(_reply(upstreams, streaming=True))
    assert events[-2]["answer"] == "\u06dd" and events[-2]["metadata"]["provider"] == "primary"
