"""Provider keys (README "Provider keys"): env var first, then Secret Manager with a TTL cache.

Only the Secret Manager client is faked (injected through `client_factory`),
with a fake clock for the TTLs; the cache, the locking and the error
handling under test are the real ones, fed real `google.api_core` exceptions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions as google_errors
from google.api_core import gapic_v1
from google.api_core.retry import Retry

from assistant import keys
from assistant.config import Settings
from assistant.keys import KeyStore, key_store, provider_key

from .conftest import log_lines

ROOT = Path(__file__).resolve().parent.parent
NAME = "ANTHROPIC_API_KEY"
KEY = "sk-ant-live-0123456789"
NEW_KEY = "sk-ant-live-rotated-987"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSecretManager:
    """Stands in for SecretManagerServiceClient: a secret's value, or the error to raise."""

    def __init__(self, **secrets: str | bytes | Exception) -> None:
        self.secrets: dict[str, str | bytes | Exception] = dict(secrets)
        self.calls: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None  # when set, reads wait for it
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def access_secret_version(self, *, request: dict[str, str], timeout: float, retry: Any) -> Any:
        with self._lock:
            self.calls.append({"request": request, "timeout": timeout, "retry": retry})
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5)
        name = request["name"].split("/")[3]
        value = self.secrets.get(name, google_errors.NotFound(f"Secret [{name}] not found"))
        if isinstance(value, Exception):
            raise value
        data = value.encode() if isinstance(value, str) else value
        return SimpleNamespace(payload=SimpleNamespace(data=data))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sm() -> FakeSecretManager:
    return FakeSecretManager(**{NAME: KEY})


def make_store(sm: FakeSecretManager, clock: FakeClock, **overrides: Any) -> KeyStore:
    options: dict[str, Any] = {
        "use_secret_manager": True,
        "project": "proj-1",
        "ttl": 300.0,
        "timeout": 3.0,
        "failure_ttl": 30.0,
    }
    options.update(overrides)
    return KeyStore(client_factory=lambda: sm, clock=clock, **options)


def test_an_env_var_wins_and_secret_manager_is_never_called(sm, clock) -> None:
    os.environ[NAME] = "  env-key\n"
    store = make_store(sm, clock)
    assert store.get(NAME) == "env-key"
    assert store.refresh(NAME) == "env-key"
    assert sm.calls == []


def test_a_blank_env_var_does_not_count(sm, clock) -> None:
    os.environ[NAME] = "   "
    assert make_store(sm, clock).get(NAME) == KEY


@pytest.mark.parametrize(
    "overrides", [{"use_secret_manager": False}, {"project": ""}], ids=["off", "no-project"]
)
def test_without_secret_manager_there_is_no_key(sm, clock, overrides) -> None:
    store = make_store(sm, clock, **overrides)
    assert store.get(NAME) is None
    assert store.refresh(NAME) is None
    assert sm.calls == []


def test_the_latest_version_is_read_with_a_bounded_retry(sm, clock) -> None:
    sm.secrets[NAME] = f"  {KEY}\n".encode()
    assert make_store(sm, clock, timeout=2.5).get(NAME) == KEY
    [call] = sm.calls
    assert call["request"] == {"name": f"projects/proj-1/secrets/{NAME}/versions/latest"}
    assert isinstance(call["timeout"], keys.Deadline) and call["timeout"].seconds == 2.5
    assert isinstance(call["retry"], Retry)
    assert call["retry"].timeout == 2.5


def test_a_reads_attempts_share_one_deadline(sm, clock) -> None:
    """google-api-core gave an attempt begun with under a second left the whole timeout
    again: a read that failed once, late, took nearly twice its time (a reviewer's). Here
    the client library's own call machinery, the store's timeout and retry."""
    given: list[float] = []

    def rpc(request: object, timeout: float, **kwargs: object) -> None:
        given.append(timeout)
        if len(given) == 1:
            time.sleep(1.0)
            raise google_errors.ServiceUnavailable("try again")
        raise google_errors.DeadlineExceeded("the deadline passed")

    client = SimpleNamespace(access_secret_version=gapic_v1.method.wrap_method(rpc))
    options = {"use_secret_manager": True, "project": "p", "ttl": 300.0, "failure_ttl": 30.0}
    store = KeyStore(client_factory=lambda: client, clock=clock, timeout=1.5, **options)
    assert store.get(NAME) is None  # the read failed: no key
    assert given[0] == pytest.approx(1.5, abs=0.1)
    assert len(given) == 2 and given[1] < 0.5  # what was left of the 1.5 s, not 1.5 again


def test_a_key_is_read_once_and_cached_within_the_ttl(sm, clock) -> None:
    store = make_store(sm, clock)
    assert [store.get(NAME) for _ in range(5)] == [KEY] * 5
    clock.advance(299)
    sm.secrets[NAME] = NEW_KEY
    assert store.get(NAME) == KEY
    assert len(sm.calls) == 1


def test_a_key_is_read_again_after_the_ttl(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    clock.advance(300)
    sm.secrets[NAME] = NEW_KEY
    assert store.get(NAME) == NEW_KEY
    assert store.get(NAME) == NEW_KEY
    assert len(sm.calls) == 2


def test_concurrent_first_reads_share_one_call(sm, clock) -> None:
    store = make_store(sm, clock)
    sm.gate = threading.Event()
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(store.get(NAME))) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert sm.entered.wait(5)
    time.sleep(0.02)  # let the others queue on the lock (late ones find the cache)
    sm.gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [KEY] * 8
    assert len(sm.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        google_errors.NotFound,
        google_errors.PermissionDenied,
        # "Secret Version [...] is in DISABLED state": the usual way to withdraw a key,
        # read as an outage, kept the old key until a restart (a reviewer's).
        google_errors.FailedPrecondition,
    ],
)
def test_a_missing_or_unreadable_secret_is_cached_as_none(sm, clock, capsys, error) -> None:
    sm.secrets[NAME] = error("no")
    store = make_store(sm, clock)
    assert [store.get(NAME) for _ in range(10)] == [None] * 10
    clock.advance(299)
    assert store.get(NAME) is None
    assert len(sm.calls) == 1
    [line] = log_lines(capsys.readouterr().out)
    assert line["severity"] == "WARNING"
    assert line["message"] == "secret.missing"
    assert (line["secret"], line["error"]) == (NAME, error.__name__)

    clock.advance(1)  # after the TTL it is looked up again, and may now exist
    sm.secrets[NAME] = KEY
    assert store.get(NAME) == KEY
    assert len(sm.calls) == 2


@pytest.mark.parametrize("data", [b"", b"  \n", b"\xff\xfe"], ids=["empty", "blank", "not-utf8"])
def test_an_empty_or_undecodable_secret_is_no_key(sm, clock, data) -> None:
    sm.secrets[NAME] = data
    store = make_store(sm, clock)
    assert store.get(NAME) is None
    assert store.get(NAME) is None
    assert len(sm.calls) == 1


@pytest.mark.parametrize(
    "data", [b"sk-a\nb", b"sk-a\x00b", "sk-\u00e9".encode()], ids=["line-break", "nul", "non-ascii"]
)
def test_a_secret_no_header_can_carry_is_no_key_and_the_log_says_so(
    sm, clock, data, capsys
) -> None:
    """A reviewer found such a key sent: every request the provider's protocol error,
    nothing saying why. Its text is never logged."""
    sm.secrets[NAME] = data
    store = make_store(sm, clock)
    assert store.get(NAME) is None
    [line] = log_lines(capsys.readouterr().out)
    assert (line["message"], line["error"]) == ("secret.missing", "NotAHeaderValue")
    assert "sk-" not in json.dumps(line)


def test_an_env_key_no_header_can_carry_is_passed_over(sm, clock, capsys, monkeypatch) -> None:
    monkeypatch.setenv(NAME, "sk-a\nb")
    sm.secrets[NAME] = KEY.encode()
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY  # Secret Manager's, as if none were set
    assert store.get(NAME) == KEY
    # Said once, not on every request, naming where the key was (a reviewer's find).
    [line] = log_lines(capsys.readouterr().out)
    assert (line["message"], line["error"]) == ("secret.missing", "NotAHeaderValue")
    assert line["source"] == "environment"


OUTAGES = [
    google_errors.ServiceUnavailable("unreachable"),
    google_errors.DeadlineExceeded("slow"),
    google_errors.RetryError("gave up", cause=google_errors.ServiceUnavailable("x")),
    google_errors.Unauthenticated("token"),
    ConnectionError("refused"),
    RuntimeError("anything else"),
]


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
def test_an_outage_keeps_the_stale_key(sm, clock, capsys, error) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    capsys.readouterr()
    clock.advance(301)
    sm.secrets[NAME] = error
    assert [store.get(NAME) for _ in range(5)] == [KEY] * 5
    clock.advance(29)
    assert store.get(NAME) == KEY
    assert len(sm.calls) == 2  # no retry within the failure window
    [line] = log_lines(capsys.readouterr().out)
    assert (line["message"], line["secret"], line["error"]) == (
        "secret.stale",
        NAME,
        type(error).__name__,
    )

    clock.advance(1)  # the next window tries again, and warns again
    assert store.get(NAME) == KEY
    assert len(sm.calls) == 3
    assert [line["message"] for line in log_lines(capsys.readouterr().out)] == ["secret.stale"]

    sm.secrets[NAME] = NEW_KEY
    clock.advance(30)
    assert store.get(NAME) == NEW_KEY


def test_an_outage_with_no_key_is_remembered_for_the_failure_window(sm, clock, capsys) -> None:
    sm.secrets[NAME] = google_errors.ServiceUnavailable("down")
    store = make_store(sm, clock)
    assert [store.get(NAME) for _ in range(10)] == [None] * 10
    clock.advance(29.9)
    assert store.get(NAME) is None
    assert len(sm.calls) == 1
    [line] = log_lines(capsys.readouterr().out)
    assert (line["message"], line["error"]) == ("secret.unavailable", "ServiceUnavailable")

    clock.advance(0.1)
    sm.secrets[NAME] = KEY
    assert store.get(NAME) == KEY
    assert len(sm.calls) == 2


def test_a_client_that_cannot_be_created_counts_as_an_outage(clock) -> None:
    def no_client() -> Any:
        raise google_errors.GoogleAPICallError("no credentials")

    store = KeyStore(
        use_secret_manager=True,
        project="p",
        ttl=300,
        timeout=3,
        client_factory=no_client,
        clock=clock,
    )
    assert store.get(NAME) is None


def test_a_stale_key_is_served_while_another_thread_reads(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    clock.advance(301)
    sm.secrets[NAME] = NEW_KEY
    sm.gate = threading.Event()
    sm.entered.clear()
    reader = threading.Thread(target=store.get, args=(NAME,))
    reader.start()
    assert sm.entered.wait(5)
    assert store.get(NAME) == KEY  # not blocked behind the read under way
    sm.gate.set()
    reader.join(5)
    assert store.get(NAME) == NEW_KEY
    assert len(sm.calls) == 2


def test_a_missing_secret_read_again_holds_up_no_other_request(sm, clock) -> None:
    """A provider with no secret (not made: it is not used) is asked for its key on
    every request; past its TTL, every request waited on its next read, a Secret
    Manager outage's whole timeout each (a reviewer's)."""
    store = make_store(sm, clock)
    assert store.get("UNUSED_KEY") is None
    clock.advance(301)
    sm.gate = threading.Event()
    sm.entered.clear()
    reader = threading.Thread(target=store.get, args=("UNUSED_KEY",))
    reader.start()
    assert sm.entered.wait(5)
    answers: list[str | None] = []
    other = threading.Thread(target=lambda: answers.append(store.get("UNUSED_KEY")))
    other.start()
    other.join(2)  # at once, not behind the read under way (that one waits for the gate)
    assert answers == [None]
    sm.gate.set()
    reader.join(5)
    assert len(sm.calls) == 2


def test_a_secret_that_never_answered_is_waited_for_by_every_request(sm, clock) -> None:
    """A first read that failed (a blip at a cold start) is not an answer: the requests
    that come while the next read is under way wait for it and get its key, not none
    (a provider skipped though its key was a moment away: a reviewer's)."""
    sm.secrets[NAME] = google_errors.ServiceUnavailable("blip")
    store = make_store(sm, clock)
    assert store.get(NAME) is None
    clock.advance(31)
    sm.secrets[NAME] = KEY
    sm.gate = threading.Event()
    sm.entered.clear()
    reader = threading.Thread(target=store.get, args=(NAME,))
    reader.start()
    assert sm.entered.wait(5)
    answers: list[str | None] = []
    other = threading.Thread(target=lambda: answers.append(store.get(NAME)))
    other.start()
    other.join(0.5)
    assert answers == []  # waiting on the read under way
    sm.gate.set()
    other.join(5)
    reader.join(5)
    assert answers == [KEY]
    assert len(sm.calls) == 2


def test_a_disabled_latest_version_drops_the_key_it_held(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    clock.advance(301)
    sm.secrets[NAME] = google_errors.FailedPrecondition("the version is in DISABLED state")
    assert store.get(NAME) is None


def test_refresh_bypasses_the_cache_and_replaces_the_key(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    sm.secrets[NAME] = NEW_KEY
    assert store.get(NAME) == KEY  # still cached
    assert store.refresh(NAME) == NEW_KEY
    assert store.get(NAME) == NEW_KEY
    assert len(sm.calls) == 2


def test_refresh_of_a_deleted_secret_drops_the_key(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    del sm.secrets[NAME]
    assert store.refresh(NAME) is None
    assert store.get(NAME) is None
    assert len(sm.calls) == 2


def test_a_failed_refresh_keeps_the_old_key(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    sm.secrets[NAME] = google_errors.ServiceUnavailable("down")
    assert store.refresh(NAME) is None
    assert store.get(NAME) == KEY
    clock.advance(301)  # stale now, and the outage goes on: still the old key
    assert store.get(NAME) == KEY


def test_refresh_reads_at_most_once_per_failure_window(sm, clock) -> None:
    store = make_store(sm, clock)
    sm.secrets[NAME] = NEW_KEY
    assert store.refresh(NAME) == NEW_KEY
    sm.secrets[NAME] = "sk-third"
    clock.advance(29)
    assert store.refresh(NAME) == NEW_KEY  # the last refresh's answer
    assert len(sm.calls) == 1
    clock.advance(1)
    assert store.refresh(NAME) == "sk-third"
    assert len(sm.calls) == 2


def test_refresh_within_its_window_gives_a_newer_key_the_ttl_read_since(sm, clock) -> None:
    """With a TTL shorter than the refresh window, a later read found the rotated key, and
    a 401 in the window was answered with the last refresh's older one: no retry, though
    the instance held the working key (a reviewer's)."""
    store = make_store(sm, clock, ttl=10.0)
    assert store.refresh(NAME) == KEY
    clock.advance(5)
    sm.secrets[NAME] = NEW_KEY
    clock.advance(7)
    assert store.get(NAME) == NEW_KEY  # past the TTL: read again
    clock.advance(1)
    assert store.refresh(NAME) == NEW_KEY


def test_concurrent_refreshes_cause_one_read(sm, clock) -> None:
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    sm.secrets[NAME] = NEW_KEY
    sm.gate = threading.Event()
    sm.entered.clear()
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.refresh(NAME))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    assert sm.entered.wait(5)
    time.sleep(0.02)  # let the others queue on the name's lock
    sm.gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [NEW_KEY] * 8
    assert len(sm.calls) == 2  # the first get, then one refresh


def test_a_key_never_reaches_logs_or_reprs(sm, clock, capsys) -> None:
    other = "OPENAI_API_KEY"
    store = make_store(sm, clock)
    assert store.get(NAME) == KEY
    sm.secrets[other] = google_errors.PermissionDenied(f"denied for {KEY}")
    assert store.get(other) is None
    clock.advance(301)
    sm.secrets[NAME] = google_errors.ServiceUnavailable(f"upstream echoed {KEY}")
    assert store.get(NAME) == KEY
    assert store.refresh(NAME) is None
    sm.secrets[NAME] = RuntimeError(f"token={KEY}")
    clock.advance(30)
    assert store.refresh(NAME) is None

    out = capsys.readouterr()
    lines = log_lines(out.out)
    assert {line["message"] for line in lines} == {"secret.missing", "secret.stale"}
    assert all("exception" not in line for line in lines)
    for text in (out.out, out.err, repr(store), repr(store._entries)):
        assert KEY not in text


def test_key_store_is_one_per_process_until_its_settings_change() -> None:
    env = {"ASSISTANT_PROVIDERS": "anthropic", "SECRET_MANAGER": "true", "SECRETS_PROJECT": "p"}
    first = key_store(Settings.from_env(env))
    assert key_store(Settings.from_env({**env, "HEARTBEAT_SECONDS": "5"})) is first
    changed = key_store(Settings.from_env({**env, "KEY_CACHE_SECONDS": "60"}))
    assert changed is not first
    assert (changed.enabled, changed.project, changed.ttl, changed.timeout) == (True, "p", 60, 3)
    assert key_store(Settings.from_env({**env, "KEY_CACHE_SECONDS": "60"})) is changed


def test_provider_key_reads_the_env_var_and_a_keyless_provider_needs_none() -> None:
    settings = Settings.from_env({"ASSISTANT_PROVIDERS": "anthropic,ollama"})
    anthropic, ollama = settings.providers["anthropic"], settings.providers["ollama"]
    assert provider_key(settings, anthropic) is None
    os.environ[NAME] = KEY
    assert provider_key(settings, anthropic) == KEY
    assert provider_key(settings, ollama) == ""


def test_secret_manager_is_not_imported_until_it_is_needed() -> None:
    script = """
import os, sys
from assistant.config import Settings
from assistant.keys import provider_key
os.environ["ANTHROPIC_API_KEY"] = "from-env"
settings = Settings.from_env({"ASSISTANT_PROVIDERS": "anthropic", "SECRET_MANAGER": "true",
                              "SECRETS_PROJECT": "p"})
assert provider_key(settings, settings.providers["anthropic"]) == "from-env"
heavy = [m for m in ("google.cloud.secretmanager", "google.api_core.retry", "grpc")
         if m in sys.modules]
print(heavy)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
