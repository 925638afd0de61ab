"""What of a provider's error answer reaches the log: its body's start, read within a
bound, with our keys and the prompt's text taken out wherever they are echoed.

An OpenAI-compatible server's 422 quotes the body it refused, a gateway's refusal the
headers it was sent: the log gets neither the key (in any of the forms an echo takes:
upper-cased, URL-escaped, in base64, cut at the body's end) nor the user's words (as
runs of their characters, echoes.py). Past what the look may cost, an error is logged
as its size alone.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import functools
import html
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from ..schema_bounds import NAME_MAPS
from .echoes import PIECE, Echoes, TooCostly, Work, echoes_of
from .request_json import upstream_json

if TYPE_CHECKING:
    from .base import Prompt, Provider


# Codings that compress (httpx inflates the first four). Any other name is read as it
# comes, as httpx does: `Content-Encoding: none` is an SSE server's way to keep
# compression middleware off its stream.
_COMPRESSING = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress"})


def compressed(response: httpx.Response) -> str | None:
    """The compressing coding a response's body came in, if any: as its content coding,
    or as a transfer coding before `chunked` (`Transfer-Encoding: gzip, chunked`, which
    the transport de-chunks and leaves compressed)."""
    headers = response.headers
    codings = f"{headers.get('content-encoding', '')},{headers.get('transfer-encoding', '')}"
    for coding in codings.split(","):
        if (name := coding.strip().lower()) in _COMPRESSING:
            return str(name)
    return None


ERROR_BODY_BYTES = 2048  # of an upstream's error answer, for the log
_KEY_ROOM_BYTES = 512  # read past the cut, so that a key across it is found whole
# What an error in a stream keeps of what the upstream said: cut to ERROR_BODY_BYTES
# once the chain has scrubbed it (a key across a cut made before was half left).
ERROR_DETAIL_CHARS = ERROR_BODY_BYTES + _KEY_ROOM_BYTES


def error_detail(value: Any, default: str = "error") -> str:
    """What a provider's error value says, as a failure's detail (cut to
    ERROR_DETAIL_CHARS): a string as it is, anything else as JSON, cut as it is
    written (`str()` of a 10 MB list held the I/O loop a quarter second before its
    cut); `default` for none."""
    if not value:
        return default
    if isinstance(value, str):
        return value[:ERROR_DETAIL_CHARS]
    try:
        written = orjson.dumps(value)
    except TypeError:  # orjson's error: too deep, an integer past 64 bits
        return f"a {type(value).__name__}"
    return written[:ERROR_DETAIL_CHARS].decode("utf-8", "ignore")


_KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})


async def error_bytes(response: httpx.Response) -> bytes:
    """The start of an error body, as much as `error_text` may use (b"" if compressed)."""
    body = b""
    if compressed(response):
        return body
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_BYTES + _KEY_ROOM_BYTES:
            break
    return body


def error_text(
    body: bytes, response: httpx.Response, headers: Mapping[str, str], prompt: Prompt | None
) -> str:
    """An error body's start (`error_bytes`) for the log only. It may echo our request (an
    OpenAI-compatible server's 422 quotes the body it refused): never the key its
    headers carried, looked for in the bytes before they are cut, nor the prompt's text."""
    if coding := compressed(response):  # asked for none: inflated, 64 KB came to 64 MB to scrub
        return f"a {coding} body, asked for none"
    sent: list[tuple[str, str]] = list(headers.items())
    with contextlib.suppress(RuntimeError):  # a response made without its request (tests)
        # As sent: httpx adds a URL's user and password as Basic auth (an Ollama behind
        # a proxy that asks for a login), which `headers` never held.
        sent += response.request.headers.items()
    secrets = request_secrets(sent)
    for secret in secrets:
        body = body.replace(secret, b"[redacted]")
    # Only what is kept is scrubbed: a first read can hold a MB, and the scrub of a MB
    # against a long history's texts held the I/O loop (every stream) 6.4 s a failure.
    kept = _whole_characters(body[: ERROR_BODY_BYTES + _KEY_ROOM_BYTES])
    readings = _as_texts(kept, response.charset_encoding)
    if not readings:
        return f"a body of {len(body)}{'+' if len(body) > len(kept) else ''} bytes, not text"
    scrubbed = []
    work = Work()  # for its readings in all
    for text in readings:
        text = without_secrets(text, secrets)  # in a body cut short, say
        scrubbed.append(text if prompt is None else without_prompt(text, prompt, work))
    # The reading the prompt was found in, if one; of two, the one it took most from (the
    # other shows its bytes as mojibake, between runs of the prompt's ASCII).
    found = [text for text in scrubbed if "[prompt]" in text]
    # Again once read back: a key an escape had hidden is one now.
    chosen = without_secrets(min(found, key=len) if found else scrubbed[0], secrets)
    return chosen[:ERROR_BODY_BYTES]


def _whole_characters(cut: bytes) -> bytes:
    """`cut` without a UTF-8 character our cut split at its end: read so, a UTF-8 body
    was no UTF-8, and logged in Windows-1252's letters (a reviewer's `ParamÃ¨tre`)."""
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data":
            return cut[: error.start]
    return cut


def _as_texts(body: bytes, charset: str | None) -> list[str]:
    """An error body's readings as text for the scrubs to look through, the likelier
    first; none for one that is no text they can: UTF-16, UTF-32 or binary (NULs: a
    prompt with none in its letters went unfound), or compressed (a gzip body with no
    Content-Encoding was logged as Latin-1, its key and prompt there for anyone who
    inflated it: more than 1% control characters). Its size is logged instead.

    UTF-8 when it is that (and, for another label, in that charset too: UTF-7 is
    ASCII). Else in the charset its label names, whole, when that reads it (KOI8-R,
    EUC-KR: read in part as UTF-8, "всё" was other letters and the prompt's echo went
    unfound); and as UTF-8 with the bytes that make no UTF-8
    character read in that charset (Windows-1252 for a Latin-1 label, or none, as
    browsers read them): an echo of our request in UTF-8 inside a proxy's page in
    another charset is then the prompt's own text, which the scrub finds (read as the
    page's charset, it was mojibake: "mÃ©decin"), and a Windows-1252 page reads as
    itself (its quotes read as Latin-1 were control characters)."""
    body = body.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in body or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return []
    try:
        named = codecs.lookup(charset).name if charset else "cp1252"
    except (LookupError, ValueError):
        named = "cp1252"
    if named in ("utf-8", "utf-8-sig", "ascii", "iso8859-1") or named.startswith(
        ("utf-16", "utf-32")
    ):
        named = "cp1252"
    whole: list[str] = []
    with contextlib.suppress(LookupError, UnicodeError, ValueError):
        whole.append(body.decode(named))  # UTF-7 and HZ are ASCII: UTF-8 too
    try:
        readings = [body.decode("utf-8"), *(whole if named != "cp1252" else [])]
    except UnicodeDecodeError:
        readings = [*whole, body.decode("utf-8", _reading_the_rest_in(named))]
    return [text for text in readings if sum(map(text.count, _CONTROLS)) * 100 <= len(text)]


def _reading_the_rest_in(codec: str) -> str:
    """The name of a codec error handler that reads the bytes UTF-8 could not in
    `codec` (registered once per codec: those Python knows are a hundred or so), or in
    Windows-1252 where `codec` cannot (no text codec, as `base64`; a byte it refuses)."""
    name = f"assistant.rest_in.{codec}"
    if name not in _REGISTERED:

        def read_the_rest(error: UnicodeError) -> tuple[str, int]:
            assert isinstance(error, UnicodeDecodeError)
            rest = error.object[error.start : error.end]
            try:
                return rest.decode(codec), error.end
            except (LookupError, UnicodeError, ValueError):
                return rest.decode("cp1252", "replace"), error.end

        codecs.register_error(name, read_the_rest)
        _REGISTERED.add(name)
    return name


_REGISTERED: set[str] = set()


# What no text an error body is holds more than a few of (tab and line breaks excepted).
_CONTROLS = [
    chr(code)
    for code in (
        *range(0x01, 0x09),
        0x0B,
        0x0C,
        *range(0x0E, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0xFFFD,
    )
]


def request_secrets(headers: list[tuple[str, str]]) -> list[bytes]:
    """The keys a request's headers carry, as an echo of it would hold them: a bearer
    token or key as it is; Basic auth's base64 and the user:password in it. Those
    shorter than 8 characters are no secret worth a scrub (not every word "test"), but
    for a login's password of _SHORTEST_PASSWORD or more."""
    secrets: list[str] = []
    passwords: list[str] = []  # a login's: secrets however short (but _SHORTEST_PASSWORD)
    for name, value in headers:
        if name.lower() not in _KEY_HEADERS:
            continue
        scheme, _, credentials = value.strip().partition(" ")
        if name.lower() != "authorization" or not credentials:  # a key as it is, spaces too
            secrets.append(value.strip())
        elif scheme.lower() == "basic":
            secrets.append(credentials.strip())
            with contextlib.suppress(ValueError):
                login = base64.b64decode(credentials.strip(), validate=True).decode()
                _user, _, password = login.partition(":")
                if len(password) >= _SHORTEST_PASSWORD:  # none: a user name, no secret
                    secrets.append(login)
                    passwords.append(password)
        else:
            secrets.append(credentials.strip())
    # The longest first: a key that holds another (a login and its password) goes whole.
    kept = {secret for secret in secrets if len(secret) >= 8} | set(passwords)
    # A login whole as it is only: its password has its own forms, its user name none.
    logins = {secret for secret in kept if ":" in secret and secret.partition(":")[2] in passwords}
    written = {form for secret in kept - logins for form in _as_echoed(secret)} | logins
    return sorted((secret.encode() for secret in written), key=len, reverse=True)


def _as_echoed(secret: str) -> set[str]:
    """A secret as an echo may write it: as it is, URL-escaped (a query, a form, a path:
    a key with `/`, `+` or `=` was cut into runs too short to find), in base64, and
    JSON-escaped with its `/` as `\\/`."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),  # a path's way, encodeURI's: its / kept
        urllib.parse.quote_plus(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # PHP's json_encode writes / as \/
    }


_SHORTEST_PASSWORD = 4  # of a base URL's login, looked for in an error body ("hunter2")


def provider_secrets(provider: Provider) -> list[bytes]:
    """What a provider's error detail must not show, however it came (an error body, an
    error in the stream): its key, and a login in its base URL as httpx sends it."""
    headers = [("x-api-key", provider.api_key)]
    url = httpx.URL(provider.settings.base_url)
    if url.username or url.password:
        login = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
        headers += [("authorization", f"Basic {login}"), ("x-api-key", url.password)]
    return request_secrets(headers)


_SECRET_PIECE_CHARS = 12  # of a key, found anywhere in a text: no word holds so much of one
_PIECE_STRIDE = 4  # pieces looked for begin this far apart in the key (runs of 15 are found)


def without_secrets(text: str, secrets: list[bytes]) -> str:
    """`text` with each secret taken out, whole and in pieces; of a login
    `user:password`, only pieces that hold some of the password (a user name is no
    secret, and what an operator needs to read: "user ops-gateway-user may not...")."""
    keys = [secret.decode() for secret in secrets]
    for key in keys:
        text = text.replace(key, "[redacted]")
    for key in keys:
        text = _without_pieces(text, key, secret_from=key.find(":") + 1)
    return text


def _without_pieces(text: str, key: str, secret_from: int = 0) -> str:
    """`text` with every run of `key`'s characters as they stand in it, of
    _SECRET_PIECE_CHARS + _PIECE_STRIDE - 1 or more, taken out (an echo cut short, or cut
    in two, kept all of the key but a character); only runs that reach past
    `secret_from` in the key count. A find of every _PIECE_STRIDE-th piece of the key,
    each found run then followed to its ends: a few KB, once per failure, and a long
    key (a 2 KB token) costs no more than a few hundred finds."""
    # In either case: an echo upper-cased ("KEY SK-ANT-API03-...") kept the whole key.
    original, text, key = text, _lower_in_place(text), _lower_in_place(key)
    size = min(_SECRET_PIECE_CHARS, len(key))
    first = max(0, secret_from - size + 1)
    found: list[tuple[int, int]] = []
    for offset in range(first, len(key) - size + 1, _PIECE_STRIDE):
        piece = key[offset : offset + size]
        at = text.find(piece)
        while at != -1:
            run = next(((start, end) for start, end in found if start <= at < end), None)
            if run is not None:  # in a run followed already: on past it
                at = text.find(piece, run[1])
                continue
            start, end, in_key = at, at + size, offset
            while start > 0 and in_key > first and text[start - 1] == key[in_key - 1]:
                start, in_key = start - 1, in_key - 1
            while (
                end < len(text)
                and end - at + offset < len(key)
                and (text[end] == key[end - at + offset])
            ):
                end += 1
            found.append((start, end))
            at = text.find(piece, end)
    if not found:
        return original
    found.sort()
    kept: list[str] = []
    start, end = found[0]
    taken = 0  # where the text not yet kept begins
    for at, until in found[1:]:
        if at <= end:  # overlapping runs: one run of the key
            end = max(end, until)
            continue
        kept += [original[taken:start], "[redacted]"]
        taken, (start, end) = end, (at, until)
    kept += [original[taken:start], "[redacted]", original[end:]]
    return "".join(kept)


def _lower_in_place(text: str) -> str:
    """`text` in lower case, each character where it was (İ, whose lower case is two,
    as i: an İ anywhere left a whole text's case as it was)."""
    return text.translate(_ONE_FOR_TWO).lower()


_ONE_FOR_TWO = {0x130: "i"}  # the one character whose lower case is two


def without_prompt(text: str, prompt: Prompt, work: Work | None = None) -> str:
    """`text` with what the prompt's texts put in it taken out: each echo of one, whole,
    cut short, a window of it, its case or whitespace changed (`echoes.py`).

    An echo may be escaped by any encoder, and more than once (JSON, with or without
    ASCII escapes, Go's `\u0026` for `&`, Python's repr, a proxy quoting a JSON body in
    its JSON): `text` is looked at as it is, then with its escapes read back once, twice
    and three times (`_unescaped_once`), each time for the prompt's texts as they are.
    An echo escaped k times is the text itself at the k-th look; reading the prompt's
    own backslashes back too would take it past its echo (a `\\` in a prompt quoted in
    JSON twice was left whole). A `text` the prompt is found in is logged as read at
    the depth the most of it was found (`_scrubbed`). Runs on the I/O loop, for every
    provider failure: the prompt's texts are indexed once (`echoes_of`), and each
    reading of a few KB (the caller cuts the detail first) looked through once; no
    text of the prompt is read back (one of 780 KB took 270 ms a failure)."""
    echoes = echoes_of(prompt, lambda: list(dict.fromkeys(_prompt_texts(prompt))))
    try:
        return _without_echoes(text, echoes, work or Work())
    except TooCostly:  # nothing of it is logged, rather than a stall or an echo
        return f"[prompt] (an error of {len(text)} characters, too costly to look through)"


def _without_echoes(text: str, echoes: Echoes, work: Work) -> str:
    plain, found = text, False
    # Then with HTML's entities read back (a proxy's error page: `don&#x27;t`) and with
    # a URL's escapes (a form or a header: a space as `+` or `%20`), when the prompt is
    # found only so: an echo of a text with an apostrophe or a space in its first words
    # was logged whole.
    for read_back in _READINGS:
        if read_back is _as_it_is:
            view = plain
        else:  # an escape the cut split, dropped: an echo's start is then seen at the end
            view = read_back(_PARTIAL_URL_OR_ENTITY.sub("", plain))
            if view == plain:
                continue
        scrubbed = _scrubbed(view, echoes, work)
        if scrubbed is not None:
            plain, found = scrubbed, True
    return plain if found else text


def _as_it_is(text: str) -> str:
    return text


def _url_and_html(text: str, unquote: Callable[[str], str]) -> str:
    return unquote(html.unescape(text))


# A URL escape or an HTML entity that a cut split at the text's end (`pin%2`, `&#x2`).
_PARTIAL_URL_OR_ENTITY = re.compile(r"(?:%[0-9A-Fa-f]?|&#?[0-9A-Za-z]{0,7})\Z")

# A proxy's page may escape both ways: `don&#x27;t%20share` (an apostrophe as an entity,
# a space as %20); and a path's or `encodeURI`'s escapes keep a prompt's own `+`.
_READINGS: tuple[Callable[[str], str], ...] = (
    _as_it_is,
    html.unescape,
    urllib.parse.unquote_plus,
    urllib.parse.unquote,
    functools.partial(_url_and_html, unquote=urllib.parse.unquote_plus),
    functools.partial(_url_and_html, unquote=urllib.parse.unquote),
)


def _scrubbed(text: str, echoes: Echoes, work: Work) -> str | None:
    """`without_prompt` on one reading of `text`; None if no text of the prompt is in it.

    Each escape pass reads back both what the best pass before it kept and `text`
    itself: a JSON-quoted text of many lines had its long lines scrubbed as they stood,
    and the short ones between them, read back, were no longer part of a whole text (a
    reviewer's form: its SSN line logged). The best is kept at the depth it was found
    at: read back further for nothing, a prompt's own backslashes (`\t` in a text
    HTML-escaped later) no longer matched, and an error's own paths were mangled."""
    best: str | None = None
    view = fresh = text
    for passes in range(_MOST_ESCAPE_PASSES + 1):
        if passes:
            if "\\" not in view and "\\" not in fresh:
                break
            view, fresh = _unescaped_once(view), _unescaped_once(fresh)
        found = [
            masked
            for masked in (_masked(one, echoes, work) for one in dict.fromkeys((view, fresh)))
            if masked is not None
        ]
        least = min(found, key=_shown, default=None)
        # Better only if it shows less than the best read back as far (`view`): read
        # back, a text is shorter for its escapes alone.
        if least is not None and (best is None or _shown(least) < _shown(view)):
            best = view = least  # read back from here on, its masks kept
    return best


def _masked(text: str, echoes: Echoes, work: Work) -> str | None:
    """`text` with each echo found in it as `[prompt]`; None for none."""
    # An escape our reading cut in two at the end is no character yet: an echo cut
    # there ends before it, and goes with it.
    partial = _PARTIAL_ESCAPE.search(text, max(0, len(text) - 10))
    whole = text if partial is None else text[: partial.start()]
    spans = echoes.spans(whole, work)
    if not spans:
        return None
    if spans[-1][1] == len(whole):
        spans[-1] = (spans[-1][0], len(text))
    kept: list[str] = []
    taken = 0
    for start, end in spans:
        kept += [text[taken:start], "[prompt]"]
        taken = end
    kept.append(text[taken:])
    return "".join(kept)


def _shown(text: str) -> int:
    """What of `text` is not `[prompt]`."""
    return len(text) - len("[prompt]") * text.count("[prompt]")


# An escape as JSON, Python or Go writes one: \uXXXX (either case), \xXX, \UXXXXXXXX,
# or a backslash and one other character (one cut short is left as it is).
_ESCAPE = re.compile(
    r"((?:\\x[0-9a-fA-F]{2})+)|\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([^uxU]))", re.DOTALL
)
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3}|x[0-9a-fA-F]?|U[0-9a-fA-F]{0,7})?\Z")
_ESCAPED_CHARS = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_MOST_ESCAPE_PASSES = 3  # escaped three times over: a proxy quoting a server quoting us


def _unescaped_once(text: str) -> str:
    """`text` with its escapes read back; surrogate pairs joined, a lone one U+FFFD."""
    text = _ESCAPE.sub(_escaped_char, text)
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _escaped_char(match: re.Match[str]) -> str:
    if (run := match.group(1)) is not None:
        # Python's repr of bytes writes UTF-8 as \xc3\xb6 (a body echoed with !r): read
        # as code points, one non-ASCII letter near a prompt's start hid its echo.
        raw = bytes.fromhex(run.replace("\\x", ""))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")  # a str's repr: \xe9 is é
    code = match.group(2) or match.group(3)
    if code is not None:
        return chr(int(code, 16)) if int(code, 16) <= 0x10FFFF else "\ufffd"
    char = match.group(4)
    return _ESCAPED_CHARS.get(char, char)


# Values of the history's call arguments looked at, at most: a body can hold tens of
# thousands, and every provider failure would look for each.
_MOST_ARGUMENT_VALUES = 1000


def _prompt_texts(prompt: Prompt) -> list[str]:
    """The prompt's texts long enough to be told from the words of an error message: the
    system prompt, each turn's text, and the arguments of the calls in the history: the
    texts in them, and each call's whole (short values, numbers) as JSON and as Python
    writes it, when it is small enough to be seen whole (an echo may quote any); the
    first _MOST_ARGUMENT_VALUES values in all. Then the frontend's declarations: each
    tool's description and the words in its parameters' schema and the response schema
    (`_schema_texts`: a gateway refusing a tool quotes it, and a description may hold
    what the prompt does), among as many more. The newest turn first: the question's echo
    is the likeliest."""
    texts = [*(turn.content for turn in reversed(prompt.turns)), prompt.system or ""]
    budget = _MOST_ARGUMENT_VALUES
    for call in (call for turn in prompt.turns for call in turn.tool_calls):
        texts += _carried_texts(call.signature)
        values = _values_in(call.args, budget)
        budget -= len(values)
        texts += (value for value in values if isinstance(value, str))
        if call.args and budget > 0:  # seen whole: small enough to write whole
            texts += _whole_forms(call.args)
        if budget <= 0:
            break
    texts += (tool.description for tool in prompt.tools)
    schemas = [*(tool.parameters for tool in prompt.tools), prompt.response_schema]
    texts += _schema_texts(schemas, _MOST_ARGUMENT_VALUES)
    return [text for text in texts if len(text) >= PIECE]


def _carried_texts(signature: str | None) -> list[str]:
    """What a signature of ours carries back to its provider (`name:` and base64: the
    thinking Anthropic needs, the reasoning DeepSeek does), sent with the turn: its
    strings, or its text (a reviewer found it logged in an error that quoted it)."""
    name, colon, encoded = (signature or "").partition(":")
    if not colon or not name or not encoded:
        return []
    try:
        text = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, ValueError):
        return []
    try:
        carried = json.loads(text)
    except ValueError:
        return [text]
    if not isinstance(carried, Mapping | list):
        return [text]
    # Not the blocks' `type`s: scrubbed, Anthropic's "Expected `thinking` or ..." was
    # logged as "Expected `[prompt]` ..." (a reviewer's).
    values = _values_in(carried, _MOST_ARGUMENT_VALUES)
    types = {value.get("type") for value in values if isinstance(value, Mapping)}
    return [value for value in values if isinstance(value, str) and value not in types]


# Where a schema holds the frontend's own words: its descriptions and titles, and values.
# JSON Schema's `$comment`, OpenAPI's `example` and any `x-` extension too: free text a
# gateway's refusal quotes as readily (they were logged).
_DESCRIBING = frozenset({"description", "title", "$comment"})
_VALUES = frozenset({"enum", "const", "default", "examples", "example"})


def _schema_texts(schemas: list[Any], most: int) -> list[str]:
    """The texts of `schemas` that are words, not structure: descriptions, titles,
    comments and the strings among values (`enum`, `examples`, an `x-` extension's...),
    among their first `most` values. A `format`, `$ref`, `$schema` or `required` name
    is what a refusal names: scrubbed, "'format' value 'date-time' is not supported"
    told nothing. The keys of a map of names (`properties`...) are names, not keywords:
    a property named `example` is a schema, its format kept."""
    texts: list[str] = []
    stack: list[tuple[Any, bool]] = [(schema, False) for schema in schemas]
    seen = 0
    while stack and seen < most:
        node, names = stack.pop()
        seen += 1
        if isinstance(node, list):
            stack.extend((item, False) for item in node)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if names:  # a name: its value is a schema
                    stack.append((value, False))
                elif key in _DESCRIBING and isinstance(value, str):
                    texts.append(value)
                elif key in _VALUES or (isinstance(key, str) and key.startswith("x-")):
                    values = _values_in(value, most - seen)
                    seen += len(values)
                    texts += (item for item in values if isinstance(item, str))
                elif isinstance(value, Mapping | list):
                    stack.append((value, key in NAME_MAPS))
    return texts


_WHOLE_FORM_CHARS = ERROR_DETAIL_CHARS  # what an error body may hold whole


def _whole_forms(args: Mapping[str, Any]) -> list[str]:
    """A call's arguments written whole as a request body (`upstream_json`: orjson's
    compact UTF-8, its own floats) or OpenAI's `arguments` (`ToolCall.arguments_json`)
    holds them, as JSON with ASCII escapes writes them, with keys sorted, and as Python
    does. The body's own forms keep other characters than ASCII as they are: an echo
    of one was not found when only the escaped forms were looked for. None past
    _WHOLE_FORM_CHARS: no error body holds it whole (a 900 KB argument written seven
    ways took 100 ms to index on the I/O loop), and its texts are looked for apart."""
    written = upstream_json(args).decode()
    if len(written) > _WHOLE_FORM_CHARS:
        return []
    return [
        written,
        json.dumps(args, ensure_ascii=False),
        json.dumps(args),
        json.dumps(args, separators=(",", ":")),
        # Keys sorted, as a server that reads them into a map writes them back (Go's).
        json.dumps(args, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
        json.dumps(args, sort_keys=True, ensure_ascii=False),
        repr(args),
    ]


def _values_in(value: Any, most: int) -> list[Any]:
    """The values in `value` (itself, and what its maps and lists hold), `most` at most."""
    seen: list[Any] = []
    stack = [value]
    while stack and len(seen) < most:
        item = stack.pop()
        seen.append(item)
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return seen
