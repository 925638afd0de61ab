"""The error vocabulary is closed and complete."""

from __future__ import annotations

from typing import get_args

from assistant.errors import ERROR_CODES, MESSAGES, UpstreamCode


def test_every_provider_failure_has_its_fixed_sentence() -> None:
    assert set(get_args(UpstreamCode)) <= set(MESSAGES)


def test_messages_are_only_for_known_codes_and_are_sentences() -> None:
    assert set(MESSAGES) <= ERROR_CODES
    for message in MESSAGES.values():
        assert message[0].isupper() and message.endswith(".")
