"""Every error code the service answers with, and the fixed sentences shown for them.

The codes are a closed set (a `Literal`), so a typo is a type error, not a
code a frontend has never heard of. Two kinds of error carry them:

    RequestError (here)        a refusal before any reply: a status, a code and
                               a message that names the problem (400 names the
                               field), plus headers such as Retry-After
    ProviderError (providers)  a provider failed; its code is an UpstreamCode
                               and its message the fixed sentence below

Codes whose message is always the same get it from MESSAGES; messages never
hold a key, a token, a stack trace or an upstream body (those go to the log).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal, get_args

UpstreamCode = Literal[
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_status",
    "upstream_error",
    "upstream_empty",
    "upstream_refused",  # it ended, declining (a content filter, a blocked prompt), with no text
    "upstream_incomplete",
    "upstream_protocol",
    "reply_too_long",  # not the provider's fault, but it ends its stream the same way
    "overloaded",  # nor this: the instance is stopping (or full, before any stream)
]

ErrorCode = Literal[
    UpstreamCode,
    "invalid_request",
    "uri_too_long",  # 414, from the worker: the request line is over its limit
    "headers_too_large",  # 431, from the worker: a header or all of them are over their limit
    "unauthenticated",
    "not_found",
    "method_not_allowed",
    "no_provider",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "providers_failed",
    "auth_unavailable",
    "config_error",
    "internal_error",
    "client_gone",
]

ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))

MESSAGES: Final[Mapping[ErrorCode, str]] = {
    "upstream_unreachable": "The model provider could not be reached.",
    "upstream_timeout": "The model provider took too long to answer.",
    "upstream_status": "The model provider refused the request.",
    "upstream_error": "The model provider reported an error.",
    "upstream_empty": "The model provider sent an empty reply.",
    "upstream_refused": "The model declined to answer this request.",
    "upstream_incomplete": "The model provider's reply was cut off.",
    "upstream_protocol": "The model provider sent a reply that could not be read.",
    "reply_too_long": "The reply took longer than this service allows and was stopped.",
    "providers_failed": "No model provider could answer right now. Please try again.",
    "no_provider": "No model provider is configured.",
    "auth_unavailable": "Sign-in cannot be checked right now. Please try again shortly.",
    "overloaded": "This server cannot take this reply now (full or stopping). Please try again.",
    "config_error": "The service is misconfigured.",
    "internal_error": "The request failed on our side.",
    "client_gone": "The client closed the connection.",
}


class RequestError(ValueError):
    """Input we refuse: an HTTP status, a code and a message naming the problem."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        code: ErrorCode = "invalid_request",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # For the log: without the values it quotes (a client may put its prompt in a
        # role or a key), taken out before the cut (cut first, a quote's other end was
        # gone, and the text after it logged: a reviewer's).
        self.for_log = _bounded(_QUOTED.sub("'…'", message))
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.status = status
        self.code: ErrorCode = code
        self.headers = dict(headers or {})  # e.g. WWW-Authenticate, Retry-After
        # Why, for the log, when the message to show does not say it (a 503's cause).
        self.reason: str | None = None
        # The body's trace id, for a refusal after the body was read: it wins over
        # the headers' in the answer and the log, as it does for a reply.
        self.trace_id: str | None = None


# A value a refusal quotes back to its client ('...' or "...", as repr() writes it).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


# A message names the field, and a field's path holds the client's own keys, which
# can be as long as the body: the answer and the log line keep both ends of it.
MAX_MESSAGE_CHARS = 400


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    head = MAX_MESSAGE_CHARS // 2
    tail = MAX_MESSAGE_CHARS - head - 1  # and the ellipsis between
    return f"{message[:head]}…{message[-tail:]}"
