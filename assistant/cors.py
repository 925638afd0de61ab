"""The CORS headers of an answer: which browser origins may read it (README "Endpoints").

Used by the app's answers (http.py) and by the worker's own refusals (worker.py), so a
page reads a 414 or 431 as the JSON error it is rather than as a network error.
"""

from __future__ import annotations

# What browser code may read of an answer beyond the CORS-safelisted headers:
# the trace id, when to try again after a 429 or 503, and why a 401 refused its token.
EXPOSED = "X-Trace-Id, Retry-After, WWW-Authenticate"


def cors_headers(
    origin: str | None, origins: tuple[str, ...], preflight: bool = False
) -> dict[str, str]:
    """The CORS headers for an answer to a request from `origin` (None: it named none)."""
    # Every answer depends on the Origin (whether one came, and whether it is allowed):
    # no cache may hand one origin's answer, or an answer to no origin, to another. A
    # preflight's also on the headers it asked for, which it allows back.
    vary = {"Vary": "Origin, Access-Control-Request-Headers" if preflight else "Origin"}
    if origin and "*" in origins:
        # A wildcard never comes with credentials.
        return {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": EXPOSED,
            **vary,
        }
    if origin and origin in origins:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": EXPOSED,
            **vary,
        }
    return vary
