"""Settings per request in-process, once per process in a server worker (assistant/config.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from assistant import config

from .conftest import python_in_own_process


@pytest.fixture(autouse=True)
def unfixed() -> Iterator[None]:
    config._fixed = None
    yield
    config._fixed = None


def test_in_process_every_request_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_SECONDS", "7")
    assert config.request_settings().heartbeat_seconds == 7
    monkeypatch.setenv("HEARTBEAT_SECONDS", "9")
    assert config.request_settings().heartbeat_seconds == 9


def test_a_worker_reads_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_SECONDS", "7")
    config.fix_for_process()
    monkeypatch.setenv("HEARTBEAT_SECONDS", "9")
    assert config.request_settings().heartbeat_seconds == 7
    assert config.request_settings() is config.request_settings()


def test_invalid_settings_are_not_fixed_and_each_request_reports_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASSISTANT_PROVIDERS", "nobody")
    config.fix_for_process()
    with pytest.raises(config.ConfigError, match="unknown providers"):
        config.request_settings()
    monkeypatch.setenv("ASSISTANT_PROVIDERS", "anthropic")  # mended: the next request runs
    assert config.request_settings().provider_order == ("anthropic",)


def test_the_server_worker_hook_fixes_them() -> None:
    """gunicorn's post_worker_init, in a process of its own (it also freezes the collector)."""
    script = (
        "from assistant import config, server; "
        "server.GUNICORN_OPTIONS['post_worker_init'](None); "
        "print(config._fixed is not None and config._fixed is config.request_settings())"
    )
    assert python_in_own_process(script).strip() == "True"
