"""Who is calling (README "Who may call"): a verified Firebase user, or the user the body names.

- `firebase`: `Authorization: Bearer <Firebase ID token>`, verified here with
  google-auth's JWT code (no firebase-admin). The claims are checked first,
  by us, on the unverified payload: google-auth checks `aud`, `iat` and `exp`
  but not `iss`, `sub` or `auth_time`, and checking all of them in one place
  gives one clear reason per refusal, and means a token that is plainly
  wrong (expired, another project) costs no certs fetch. Then the RS256
  signature is checked by `google.auth.jwt.decode` against the cert of the
  token's key id (certs.py fetches and caches them), with `aud`/`iat`/`exp`
  checked again on the way. With FIREBASE_AUTH_EMULATOR_HOST set, the Auth
  emulator's unsigned tokens (`alg: none`) pass the same claim checks and
  no signature check.
- `iam` and `none`: the caller is not checked here (Cloud Run IAM did it, or
  this is a local run); the body's `currentUser` names the user.

A refusal never echoes the token, nor google-auth's messages (they can quote
it): the client and the log get a fixed reason.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.auth import exceptions as google_auth_errors
from google.auth import jwt

from .certs import CertsUnavailable, cert_cache
from .config import AuthSettings
from .errors import MESSAGES, RequestError
from .store import Author
from .tools import without_lone_surrogates

MAX_TOKEN_CHARS = 16 * 1024  # real ID tokens are about 1 KB
MAX_UID_CHARS = 128
ISSUER_PREFIX = "https://securetoken.google.com/"

# One challenge for a token missing, malformed, expired or forged, as the frontend
# expects it (RFC 6750 would leave the error code out when none was sent).
_REFUSED = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# RecursionError: google-auth parses a segment with json.loads, and ~2,500 nested
# brackets fit in a token under MAX_TOKEN_CHARS.
_DECODE_ERRORS = (ValueError, TypeError, RecursionError, google_auth_errors.GoogleAuthError)

# google-auth ships without type hints; these say what its JWT functions return.
_decode_header: Callable[[str], Mapping[str, Any]] = jwt.decode_header
_decode: Callable[..., Mapping[str, Any]] = jwt.decode


class InvalidToken(ValueError):
    """The token is refused; the message is a fixed reason, safe to show and log."""


def caller(headers: Mapping[str, str], auth: AuthSettings) -> Author | None:
    """The verified user in `firebase` mode; None in `iam` / `none`, where the body names them.

    Raises RequestError: 401 `unauthenticated`, or 503 `auth_unavailable`.
    """
    if auth.mode != "firebase":
        return None
    try:
        claims = verify_id_token(bearer_token(headers.get("Authorization")), auth)
    except InvalidToken as exc:
        raise RequestError(str(exc), 401, "unauthenticated", headers=_REFUSED) from None
    except CertsUnavailable as exc:
        error = RequestError(
            MESSAGES["auth_unavailable"], 503, "auth_unavailable", headers={"Retry-After": "5"}
        )
        # In the request's own log line too: certs.py's line has no trace id, and the
        # operator following one should see why sign-in failed.
        error.reason = str(exc)
        raise error from None
    return Author(
        user_id=claims["sub"],
        email=_optional_text(claims, "email"),
        name=_optional_text(claims, "name"),
    )


def bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise InvalidToken("sign-in required: send Authorization: Bearer <Firebase ID token>")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("the Authorization header must be: Bearer <Firebase ID token>")
    if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWT.fullmatch(token):
        raise InvalidToken("the ID token is not a JWT")
    if not _canonical(token.rpartition(".")[2]):
        raise InvalidToken("the ID token is not a JWT")
    return token


# Three parts in unpadded base64url (RFC 7515's compact form; the emulator's has no
# signature). The decoder takes `=` and the other alphabet's `+/` too: one token could
# be sent in many spellings, each accepted.
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _canonical(signature: str) -> bool:
    """Whether the signature is its bytes' one spelling: the decoder ignores the bits a
    last character carries past them, so 16 spellings of an RS256 signature verified.
    (The other two parts are the signed text itself: respelled, they fail to verify.)"""
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:  # a length no bytes have (one character past a whole group)
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == signature


def verify_id_token(token: str, auth: AuthSettings) -> Mapping[str, Any]:
    """The token's claims once every check of §9 passed; InvalidToken saying which did not.

    Raises CertsUnavailable when the signature cannot be checked for lack of certs.
    """
    try:
        header = _decode_header(token)
        claims = _decode(token, verify=False)
    except _DECODE_ERRORS:
        raise InvalidToken("the ID token is not a JWT") from None
    arrived = time.monotonic()  # the wait for certs, timed by a clock no step moves
    check_claims(claims, auth, now=time.time())

    algorithm = header.get("alg")
    if algorithm == "none":
        if not auth.emulator_host:
            raise InvalidToken("the ID token is unsigned")
        # The local Auth emulator's token, as it makes them: no key, no signature.
        if "kid" in header or not token.endswith("."):
            raise InvalidToken("an unsigned ID token names no key and carries no signature")
        return claims  # claims checked, nothing to verify
    if algorithm != "RS256":
        raise InvalidToken("the ID token must be signed with RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str) or not key_id:
        raise InvalidToken("the ID token names no signing key (kid)")
    cert = cert_cache(auth.certs_url).cert_for(key_id)
    if cert is None:
        raise InvalidToken("the ID token names an unknown signing key (kid)")
    try:
        _decode(
            token,
            certs={key_id: cert},
            audience=auth.project_id,
            # Ours decide (check_claims, already passed at the token's arrival):
            # google-auth checks the time again, after any wait for the certs, and in
            # whole seconds rounded down, so it is given that wait and a second more.
            clock_skew_in_seconds=math.ceil(auth.clock_skew_seconds + time.monotonic() - arrived)
            + 1,
        )
    except _DECODE_ERRORS:
        raise InvalidToken("the ID token's signature does not verify") from None
    return claims


def check_claims(claims: Mapping[str, Any], auth: AuthSettings, now: float) -> None:
    """Every claim check of §9 (the ones google-auth makes too, and those it leaves to us)."""
    skew = auth.clock_skew_seconds
    if claims.get("aud") != auth.project_id:
        raise InvalidToken("the ID token is for another Firebase project (aud)")
    if claims.get("iss") != ISSUER_PREFIX + auth.project_id:
        raise InvalidToken("the ID token has the wrong issuer (iss)")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_UID_CHARS:
        raise InvalidToken(f"the ID token's sub must be 1-{MAX_UID_CHARS} characters")
    if without_lone_surrogates(subject) != subject:  # the user's id: never saved altered
        raise InvalidToken("the ID token's sub is not valid text (a lone UTF-16 surrogate)")
    if _time_claim(claims, "exp") + skew < now:
        raise InvalidToken("the ID token has expired")
    # nbf: Firebase's tokens carry none, but one that says it is not valid yet is not
    # (RFC 7519), as google-auth would not check.
    for name in ("iat", "auth_time", *(("nbf",) if "nbf" in claims else ())):
        if _time_claim(claims, name) - skew > now:
            raise InvalidToken(f"the ID token's {name} is in the future")


def _time_claim(claims: Mapping[str, Any], name: str) -> float:
    missing = f"the ID token has no {name} claim that is a time"
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(missing)
    try:
        time_claim = float(value)
    except OverflowError:  # an integer past any float
        raise InvalidToken(missing) from None
    # NaN compares false with every time, so an `exp` of NaN would never expire.
    if not math.isfinite(time_claim):
        raise InvalidToken(missing)
    return time_claim


def _optional_text(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim that only describes the user, with any lone UTF-16 surrogate made U+FFFD:
    a display name a frontend cut mid-emoji holds one, and no Firestore document can,
    so every save of that user's messages failed."""
    value = claims.get(name)
    return without_lone_surrogates(value) if isinstance(value, str) else None
