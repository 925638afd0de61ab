"""Every setting, read from the environment by small functions with defaults.

`request_settings()` reads them once per request, so that a test that
changes the environment in-process sees the change at once, with no cache to
clear; except in a server worker, whose environment is fixed for its life
(Cloud Run sets it per revision): there `fix_for_process()` reads them once,
when the worker starts, and each request is spared the ~35 µs (~130 µs on an
idle, cold core) of reading ~40 variables (README "Speed"). Nothing per chunk
reads the environment. The README's configuration table lists every name
read here.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import idna

PROVIDER_NAMES = ("anthropic", "openai", "gemini", "ollama")
AUTH_MODES = ("firebase", "iam", "none")
FIREBASE_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)
MAX_CLOCK_SKEW_SECONDS = 60
# Bounds past which a value is a slip, not a choice: longer than a day, a timeout is
# no timeout (and past ~1e9 s the socket and gRPC deadlines it becomes overflow); no
# provider writes a million tokens; Anthropic's temperature goes up to 1, the others' 2.
MAX_SECONDS = 86_400
MAX_OUTPUT_TOKENS = 1_000_000
MAX_TEMPERATURES = {"anthropic": 1, "openai": 2, "gemini": 2, "ollama": 2}
MAX_COUNT = 1_000_000_000

DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",  # with the version path, as OpenAI's SDK has it
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "",  # no public default: set OLLAMA_BASE_URL to use it
}

DEFAULT_THINKING_BUDGET = 2048
DEFAULT_MODELS = {
    "anthropic": "claude-sonnet-4-5",
    "openai": "gpt-4.1-mini",
    "gemini": "gemini-3.8-flash",
    "ollama": "llama3.2",
}


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    minimum: float = 0,
    maximum: float = MAX_COUNT,
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {_shown(raw)}") from None
    if not math.isfinite(value):  # NaN passes every comparison below; infinity, no bound
        raise ConfigError(f"{name} must be a finite number, got {_shown(raw)}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {_shown(raw)}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {_shown(raw)}")
    return value


def _shown(value: str) -> str:
    """A setting's value as an error may quote it: a key pasted into the wrong variable
    (ANTHROPIC_TEMPERATURE=sk-ant-...) was logged whole. Shown only with a setting's
    shape, 40 characters at most: a number's, or a name's as `shown_key_name` sees one
    (a rule for keys' starts alone let a key with none, Mistral's 32 random characters,
    be quoted: a reviewer's), words of those between spaces or commas too (a typo's
    `0,7` or `anthropic openai`), but no UUID's (some keys are)."""
    words = value.replace(",", " ").split()
    if len(value) <= 40 and all(_a_settings_word(word) for word in words):
        return repr(value)
    return f"a value of {len(value)} characters (not shown: it may be a key)"


def _a_settings_word(word: str) -> bool:
    if _UUID.fullmatch(word):
        return False
    return _NUMBER_SHAPE.fullmatch(word) is not None or shown_key_name(word) == word


_NUMBER_SHAPE = re.compile(r"[-+]?[0-9.][0-9.eE+-]*")
_UUID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", re.IGNORECASE)


def _seconds(env: Mapping[str, str], name: str, default: float, minimum: float = 0.01) -> float:
    return _number(env, name, default, minimum, MAX_SECONDS)


def _integer(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int = MAX_COUNT
) -> int:
    value = _number(env, name, default, minimum, maximum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {_shown(env.get(name, ''))}")
    return int(value)


def _digits(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    """A count of at least 1 that functions-framework reads too, with int(): digits only
    (set but blank too: int("") fails there)."""
    raw = env.get(name, "").strip()
    if name in env and not raw:
        raise ConfigError(f"{name} is set but empty: unset it, or give a number")
    if raw and not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"{name} must be a whole number written in digits, got {_shown(raw)}")
    return _integer(env, name, default, minimum=1, maximum=maximum)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {_shown(raw)}")


def _names(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _text(env, name, default).split(",") if part.strip())


def _base_url(env: Mapping[str, str], name: str, default: str, joined: bool = True) -> str:
    """An http(s) URL; `joined`, a base that paths are joined after (no query then)."""
    url = _text(env, name, default)
    url = url.rstrip("/") if joined else url
    if joined and ("?" in url or "#" in url):
        # Paths are joined to it (f"{base}/v1/messages"): a query or a fragment would end
        # up inside the path, and a key in it (Gemini's ?key=) in every log line.
        raise ConfigError(f"{name} must have no query or fragment (nothing from ? or #)")
    if url and not url.lower().startswith(("http://", "https://")):
        # Not quoted: without its "//", a login in it is not where shown_url looks.
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    if url:
        try:
            parsed = httpx.URL(url)
            # A host no name lookup takes: an empty label (a..b), a 500 per use; a space
            # (httpx escapes it, %20) or a control character, a 502 per request. As httpx
            # sends it (IDNA 2008: Python's codec is IDNA 2003's, which refused names
            # httpx takes). An IPv6 address may hold a zone's %.
            host = parsed.raw_host.decode("ascii")
            if ":" not in host and not _HOST_NAME.fullmatch(host):
                raise ValueError(host)
        except (httpx.InvalidURL, ValueError):  # http://[::1/certs: each use was a 500
            raise ConfigError(f"{name} is not a URL httpx can read") from None
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise ConfigError(f"{name} has a port outside 1-65535")
    return url


# A host name as httpx sends it (IDNA's xn-- form included): labels, a dot at the end.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")

# To the last "@": a password with a "/", "?" or "#" in it (unescaped) would otherwise
# end the match early and show its rest; a path with an "@" is only shown less of.
_USERINFO = re.compile(r"(?<=//).*@", re.DOTALL)


def shown_url(url: str) -> str:
    """`url` as logs and errors may show it: a user and password in it (httpx sends them
    as Basic auth, the one way to reach an Ollama behind a proxy that asks for a login)
    become `***@`."""
    return _USERINFO.sub("***@", url, count=1)


def _collection(env: Mapping[str, str], name: str, default: str) -> str:
    """A top-level Firestore collection id (and so never a path into another one)."""
    value = _text(env, name, default)
    reserved = value.startswith("__") and value.endswith("__")
    if "/" in value or value in (".", "..") or reserved or len(value.encode()) > 1500:
        raise ConfigError(
            f"{name} must be one collection id (no '/', not '.', '..' or __name__), "
            f"got {_shown(value)}"
        )
    return value


# Secret Manager's rule for a secret id (the name of the env var that wins over it, too):
# any other made every read a failure, logged as if Secret Manager were down.
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
# A project id (a-z 0-9 -; a domain's, "example.com:name"), or its number: what goes into
# a secret's path, projects/<this>/secrets/<id> (a '/' or a blank there made another path).
_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")


def _reads_secrets(env: Mapping[str, str]) -> bool:
    # On Cloud Run (K_SERVICE is set) keys come from Secret Manager by default; locally
    # from env vars only, so no cloud is needed.
    return _flag(env, "SECRET_MANAGER", bool(env.get("K_SERVICE")))


def _key_name(env: Mapping[str, str], name: str, prefix: str) -> str:
    """{P}_KEY_NAME, checked as a secret id when Secret Manager is read (an env var's name
    alone may be another)."""
    value = _text(env, name, f"{prefix}_API_KEY")
    # Read when a project names where: with none, keys.py reads none (secret.no_project).
    read = _reads_secrets(env) and _text(env, "SECRETS_PROJECT", project_id(env))
    if read and not _SECRET_ID.fullmatch(value):
        raise ConfigError(
            f"{name} must be a secret id (1-255 of A-Z a-z 0-9 _ -), got {shown_key_name(value)!r}"
        )
    return value


def shown_key_name(name: str) -> str:
    """A key's name as log lines and errors may show it: only if it has a name's shape,
    words of letters and digits between `_`, `-` or `.`, none over 12 long, and does not
    begin as keys do. A key pasted into {P}_KEY_NAME went into log lines as a name
    ("... unset"), in any case, quoted, after `Bearer `, cut by a line break, as hex; a
    pattern for keys missed one form after another, where a key's random part is one
    long word or several. A name not shown is said so, nothing of it told."""
    if len(name) <= 255 and _NAME_SHAPE.fullmatch(name) and not _KEY_START.match(name):
        return name
    return "(not shown: it may be a key)"


_NAME_SHAPE = re.compile(r"[A-Za-z0-9]{1,12}(?:[_.-][A-Za-z0-9]{1,12})*")
_KEY_START = re.compile(r"sk[-_]|aiza", re.IGNORECASE)  # Anthropic's, OpenAI's, Google's


def _secrets_project(env: Mapping[str, str], project: str) -> str:
    """SECRETS_PROJECT, checked when Secret Manager is read (it is used only then; none at
    all is logged at the first read, keys.py)."""
    value = _text(env, "SECRETS_PROJECT", project)
    if value and _reads_secrets(env) and not _PROJECT_ID.fullmatch(value):
        said = "SECRETS_PROJECT" if env.get("SECRETS_PROJECT", "").strip() else "the project"
        raise ConfigError(
            f"{said} must be a project id or number for Secret Manager, got {_shown(value)}"
        )
    return value


# Firestore's rule for a database id: a letter, then letters, digits and hyphens, 4-63 in
# all, no hyphen at the end; or "(default)". Any other was refused on every save alone.
_DATABASE_ID = re.compile(r"[a-z][a-z0-9-]{2,61}[a-z0-9]|\(default\)")


def _database(env: Mapping[str, str]) -> str:
    value = _text(env, "FIRESTORE_DATABASE", "(default)")
    if not _DATABASE_ID.fullmatch(value):
        raise ConfigError(
            "FIRESTORE_DATABASE must be a Firestore database id (4-63 lowercase letters, "
            f"digits and hyphens, from a letter) or (default), got {_shown(value)}"
        )
    return value


def cors_origins(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """CORS_ORIGINS, which no value makes invalid: read on its own too, so that a
    browser can read the config_error answer when another setting is wrong."""
    names = _names(os.environ if env is None else env, "CORS_ORIGINS", "*")
    return tuple(_origin(name) for name in names)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origins_that_match_nothing(origins: tuple[str, ...]) -> list[str]:
    """The entries of CORS_ORIGINS no browser's Origin can be (no scheme, a path, a
    pattern, a list split by spaces): taken as they are, they only refuse, which a
    frontend sees as a network error and nobody else sees at all."""
    return [name for name in origins if name not in ("*", "null") and _origin_or_none(name) is None]


def _origin(name: str) -> str:
    """An origin as a browser sends it: its scheme and host in lower case, no default
    port, no slash at the end (one copied from an address bar has one), a host of other
    letters than ASCII's in its IDNA form, an IP address in its shortest. Compared as
    text, `https://App.example.com:443` matched no browser's origin, silently. One with
    a user or password is kept as written (matching nothing): read, `https://a@b` would
    have allowed `https://b`."""
    return _origin_or_none(name) or name


def _origin_or_none(name: str) -> str | None:
    """`name` as `_origin` writes it; None when it can be no browser's origin."""
    name = name.rstrip("/") or name
    try:
        parts = urllib.parse.urlsplit(name)
        port = parts.port
    except ValueError:  # a port that is no number
        return None
    if (
        not parts.scheme
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or any(character in name for character in " *,")
    ):
        return None
    scheme = parts.scheme.lower()
    host = _host(parts.hostname)
    if host is None:  # no browser's origin
        return None
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _host(hostname: str) -> str | None:
    """`hostname` (lower case already) as a browser writes it in an origin; None for one
    no browser takes."""
    if "%" in hostname:  # a browser reads a host's escapes back first (%41.com is a.com)
        try:
            hostname = urllib.parse.unquote(hostname, errors="strict").lower()
        except UnicodeDecodeError:  # no UTF-8: no host
            return None
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    if _FORBIDDEN_IN_A_HOST.search(hostname):  # escaped (a%3A8080 is no a:8080 to a browser)
        return None
    if not hostname.isascii():
        # As the URL standard has browsers write it (UTS 46, nontransitional): Python's
        # own codec is IDNA 2003's, which writes faß.de as fass.de, another domain. Its
        # mapping first: full-width digits and dots make an address (127.1, full-width).
        try:
            hostname = idna.uts46_remap(hostname, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError):
            return None
        if _FORBIDDEN_IN_A_HOST.search(hostname):  # a full-width @ is an @
            return None
    # An address a browser reads: numbers (decimal, octal, hex) and dots, one at the end
    # dropped (127.000.000.001, 0x7f.1, 127.0.0.1.: a browser's 127.0.0.1); one that
    # ends in a number and is no address, no host to a browser (1.2.3.4.5, 08.1).
    if _ENDS_IN_A_NUMBER.search(hostname.removesuffix(".")):
        try:
            return socket.inet_ntoa(socket.inet_aton(hostname.removesuffix(".")))
        except OSError:
            return None
    if hostname.isascii():
        return hostname
    with contextlib.suppress(idna.IDNAError, UnicodeError):
        return idna.encode(hostname, uts46=True, transitional=False).decode("ascii")
    # A symbol IDNA 2008 refuses, which browsers take (☃.net is xn--n3h.net to them):
    # each label's punycode, as the URL standard does without IDNA 2008's checks (IDNA
    # 2003's codec would also write ß as ss: another domain).
    try:
        return ".".join(map(_punycode, hostname.split(".")))
    except (idna.IDNAError, UnicodeError):
        return None


def _punycode(label: str) -> str:
    """A label as browsers write it in a host, with the checks of UTS 46 they keep (a
    joiner out of place, a leading combining mark, bidi's rules, a non-ASCII label
    that says it is punycode): one that fails them no browser takes (IDNAError)."""
    if label.isascii():
        return label
    if label.startswith("xn--"):
        raise idna.IDNAError("a label that says it is punycode is not")
    idna.check_initial_combiner(label)
    idna.check_bidi(label)
    for position, character in enumerate(label):
        if character in "\u200c\u200d" and not idna.valid_contextj(label, position):
            raise idna.IDNAError("a joiner out of place")
    return "xn--" + label.encode("punycode").decode("ascii")


# What no host holds, to a browser (the URL standard's forbidden domain code points).
_FORBIDDEN_IN_A_HOST = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")

# A host whose last label is a number (decimal, or hex: "0x", "0x7f"), which browsers
# read as an IPv4 address or refuse (the URL standard's "ends in a number").
_ENDS_IN_A_NUMBER = re.compile(r"(?:^|\.)(?:[0-9]+|0x[0-9a-f]*)\Z")


def project_id(env: Mapping[str, str] | None = None) -> str:
    """The Google Cloud project, which no value makes invalid: read on its own too, so
    that a config_error's log line still carries the trace Cloud Logging links."""
    env = os.environ if env is None else env
    return _text(env, "GOOGLE_CLOUD_PROJECT", _text(env, "GCP_PROJECT", ""))


@dataclass(frozen=True)
class ProviderSettings:
    """One provider's model settings; the key itself is fetched by keys.py."""

    name: str
    base_url: str
    model: str
    key_name: str  # env var / Secret Manager secret holding the key ("" = needs none)
    max_tokens: int
    temperature: float | None
    thinking: bool
    thinking_budget: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], name: str) -> ProviderSettings:
        prefix = name.upper()
        raw_temperature = env.get(f"{prefix}_TEMPERATURE", "").strip()
        model = _text(env, f"{prefix}_MODEL", DEFAULT_MODELS[name])
        if name == "gemini":  # as Google's list of models names them: read as its own path
            model = model.removeprefix("models/")
            if not model.strip():
                raise ConfigError(f"{prefix}_MODEL names no model")
        # Ollama takes no budget (only `think: true`), nor Claude 4.6 on (adaptive): the
        # setting is not read there, so a value never sent cannot make every request a 500.
        budgeted = name != "ollama" and not thinks_adaptively(name, model)
        settings = cls(
            name=name,
            base_url=_base_url(env, f"{prefix}_BASE_URL", DEFAULT_BASE_URLS[name]),
            model=model,
            key_name="" if name == "ollama" else _key_name(env, f"{prefix}_KEY_NAME", prefix),
            max_tokens=_integer(
                env, f"{prefix}_MAX_TOKENS", 4096, minimum=1, maximum=MAX_OUTPUT_TOKENS
            ),
            temperature=_number(env, f"{prefix}_TEMPERATURE", 0, maximum=MAX_TEMPERATURES[name])
            if raw_temperature
            else None,
            thinking=_flag(env, f"{prefix}_THINKING", False),
            thinking_budget=_integer(
                env,
                f"{prefix}_THINKING_BUDGET",
                DEFAULT_THINKING_BUDGET,
                minimum=1024,
                maximum=MAX_OUTPUT_TOKENS,
            )
            if budgeted
            else DEFAULT_THINKING_BUDGET,
        )
        # Providers refuse a thinking budget that leaves no room for the answer; Gemini 3
        # is sent a level made from it, no budget (providers/gemini.py).
        room_needed = budgeted and not gemini_3_on(name, model)
        if room_needed and settings.thinking and settings.max_tokens <= settings.thinking_budget:
            raise ConfigError(
                f"{prefix}_MAX_TOKENS ({settings.max_tokens}) must be larger than "
                f"{prefix}_THINKING_BUDGET ({settings.thinking_budget}) when thinking is on"
            )
        return settings


def gemini_3_on(provider: str, model: str) -> bool:
    """Gemini 3 and later, by name ("gemini-3-pro-preview", "gemini-3.5-flash"): they
    take a response schema beside tools, and a thinking level for a budget. Google's
    aliases ("gemini-flash-latest") name Gemini 3 models since Gemini 2.5 Flash and Pro
    were shut down (December 2026): taken as such."""
    return provider == "gemini" and _GEMINI_3.match(model) is not None


_GEMINI_3 = re.compile(r"gemini-([3-9]|[1-9][0-9]|(?:[a-z]+-)+latest$)")


def thinks_adaptively(provider: str, model: str) -> bool:
    """Whether thinking on is sent as adaptive, with no budget: Claude 4.6 and later, by
    the version in the model's name (providers/anthropic.py)."""
    return claude_at_least(provider, model, (4, 6))


def thinks_always(provider: str, model: str) -> bool:
    """Whether the model thinks whatever a request says: Claude 5 and later think
    unless told not to, and most refuse being told (`disabled`, a 400: Fable 5, and all
    from 5.5 on) (providers/anthropic.py)."""
    return claude_at_least(provider, model, (5, 0))


def preserves_thinking(provider: str, model: str) -> bool:
    """Whether the model checks a thinking block sent back against what came before it
    when it was made (Anthropic's "preserved thinking": a changed system prompt, tools
    or earlier message is a 400 unless the block may be dropped): Claude 5.5 on, and
    Fable and Mythos from 5.1 (Mythos 5.1 records the binding without checking it)."""
    version = claude_version(provider, model)
    if version is None:
        return False
    return version >= (5, 5) or (version >= (5, 1) and any(n in model for n in _FROM_5_1))


_FROM_5_1 = ("fable", "mythos")  # the lines whose 5.1 came with 5.5's rules


def refuses_a_forced_call(provider: str, model: str) -> bool:
    """Whether the model refuses a forced tool call (`tool_choice` any or tool, a 400 on
    every such request): those that preserve thinking but Haiku 5.5 (Anthropic's
    migration guides). Others of Claude 5 take one beside their thinking, which it skips."""
    return preserves_thinking(provider, model) and "haiku" not in model


def claude_at_least(provider: str, model: str, version: tuple[int, int]) -> bool:
    """Whether `model` is a Claude of `version` or later, by the version in its name (a
    name that says none is not)."""
    named = claude_version(provider, model)
    return named is not None and named >= version


@functools.cache  # asked several times a request (its thinking, tools, headers), of one name
def claude_version(provider: str, model: str) -> tuple[int, int] | None:
    """The Claude version `model`'s name says (None: none, or not Anthropic's provider).
    Claude Mythos Preview's name says none: it is taken as the Opus 4.7 it came beside,
    whose rules it keeps (adaptive thinking only: a budget is a 400)."""
    if provider != "anthropic":
        return None
    named = _CLAUDE_VERSION.search(model)
    if named is None:
        return (4, 7) if "claude-mythos-preview" in model else None
    return (int(named[1]), int(named[2] or 0))


# The version in a model's name: claude-opus-4-7, claude-3-5-sonnet-20241022,
# claude-sonnet-4-20250514 (4: a date is no minor version), us.anthropic.claude-fable-5.
_CLAUDE_VERSION = re.compile(r"claude-(?:[a-z]+-)*(\d+)(?:[-.](\d{1,2})(?!\d))?")


@dataclass(frozen=True)
class Timeouts:
    connect: float  # TCP + TLS to the provider
    # connecting and the request sent -> the first text, thinking delta or tool call
    # (a tool call's arguments arriving start the wait again: it is working)
    first_chunk: float
    idle: float  # longest silence on the upstream socket once it is streaming
    reply: float = 900.0  # the whole reply, every provider tried (MAX_REPLY_SECONDS)


# Replies an instance streams at once by default: Cloud Run's largest --concurrency.
# A streaming reply holds no request thread while its chunks flow (worker.py
# "parking"), so THREADS does not bound it; the CPU does (README "Speed").
DEFAULT_MAX_STREAMS = 1000


@dataclass(frozen=True)
class AuthSettings:
    """Who may call (README "Who may call"). `mode` is firebase, iam or none."""

    mode: str
    project_id: str  # the Firebase project: the token's `aud`, and its `iss` suffix
    certs_url: str
    emulator_host: str  # FIREBASE_AUTH_EMULATOR_HOST: accept its unsigned tokens
    clock_skew_seconds: float
    max_streams_per_user: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], project_id: str) -> AuthSettings:
        on_cloud_run = bool(env.get("K_SERVICE"))
        mode = _text(env, "AUTH_MODE", "firebase" if on_cloud_run else "none").lower()
        if mode not in AUTH_MODES:
            raise ConfigError(
                f"AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {_shown(mode)}"
            )
        settings = cls(
            mode=mode,
            project_id=_text(env, "FIREBASE_PROJECT_ID", project_id),
            certs_url=_base_url(env, "FIREBASE_CERTS_URL", FIREBASE_CERTS_URL, joined=False),
            emulator_host=_text(env, "FIREBASE_AUTH_EMULATOR_HOST", ""),
            clock_skew_seconds=_number(
                env, "AUTH_CLOCK_SKEW_SECONDS", 10, maximum=MAX_CLOCK_SKEW_SECONDS
            ),
            max_streams_per_user=_integer(env, "MAX_STREAMS_PER_USER", 4, minimum=1),
        )
        # A deployed service must never run open by accident: these two are
        # for local runs, and on Cloud Run every request is refused instead.
        if on_cloud_run and mode == "none":
            raise ConfigError(
                "AUTH_MODE=none is for local runs only; on Cloud Run use firebase or iam"
            )
        if on_cloud_run and settings.emulator_host:
            raise ConfigError(
                "FIREBASE_AUTH_EMULATOR_HOST is set on Cloud Run: it would accept unsigned tokens"
            )
        if mode == "firebase" and not settings.project_id:
            raise ConfigError(
                "AUTH_MODE=firebase needs FIREBASE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT) set"
            )
        return settings


@dataclass(frozen=True)
class Settings:
    provider_order: tuple[str, ...]
    providers: dict[str, ProviderSettings]
    timeouts: Timeouts
    heartbeat_seconds: float
    max_body_bytes: int
    max_input_chars: int
    max_history_messages: int
    cors_origins: tuple[str, ...]
    project_id: str
    database: str  # the project's Firestore database
    collection: str
    persist_timeout_seconds: float
    secret_manager: bool  # read keys from Secret Manager (env vars still win)
    secrets_project: str
    key_cache_seconds: float
    secret_timeout_seconds: float
    auth: AuthSettings
    max_streams: int  # replies in flight on this instance
    send_timeout_seconds: float  # a client that accepts no write this long is gone

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        order = _names(env, "ASSISTANT_PROVIDERS", ",".join(PROVIDER_NAMES))
        unknown = [name for name in order if name not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(
                f"ASSISTANT_PROVIDERS names unknown providers "
                f"{', '.join(map(_shown, unknown))}; "
                f"known: {', '.join(PROVIDER_NAMES)}"
            )
        if not order:  # set, to commas and spaces only
            raise ConfigError("ASSISTANT_PROVIDERS names no provider")
        if len(set(order)) < len(order):  # one provider asked twice in one reply
            twice = sorted({name for name in order if order.count(name) > 1})
            raise ConfigError(f"ASSISTANT_PROVIDERS names {', '.join(twice)} more than once")
        project = project_id(env)
        blank = [name for name in ("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT") if name in env]
        if not project and blank:
            # Set but blank: the client libraries read it again themselves, untrimmed,
            # and every save failed (the name of no project) while the rest worked.
            said = f"{blank[0]} is" if len(blank) == 1 else f"{' and '.join(blank)} are"
            raise ConfigError(f"{said} set but blank: name a project, or unset what is blank")
        emulator = env.get("FIRESTORE_EMULATOR_HOST")
        if emulator is not None and not emulator.strip():
            # The client library takes it, set, for an emulator's address (blank too): every
            # save failed, "the target uri is not valid" (`--update-env-vars X=` to clear it).
            raise ConfigError("FIRESTORE_EMULATOR_HOST is set but blank: unset it")
        if env.get("K_SERVICE") and emulator:
            # The client library would send every message there, and none to Firestore.
            raise ConfigError("FIRESTORE_EMULATOR_HOST is set on Cloud Run: nothing would be saved")
        return cls(
            provider_order=order,
            providers={name: ProviderSettings.from_env(env, name) for name in order},
            timeouts=Timeouts(
                connect=_seconds(env, "CONNECT_TIMEOUT_SECONDS", 5),
                first_chunk=_seconds(env, "FIRST_CHUNK_TIMEOUT_SECONDS", 30),
                idle=_seconds(env, "IDLE_TIMEOUT_SECONDS", 60),
                reply=_seconds(env, "MAX_REPLY_SECONDS", 900),
            ),
            heartbeat_seconds=_seconds(env, "HEARTBEAT_SECONDS", 15),
            max_body_bytes=_integer(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1),
            max_input_chars=_integer(env, "MAX_INPUT_CHARS", 32_000, minimum=1),
            max_history_messages=_integer(env, "MAX_HISTORY_MESSAGES", 200, minimum=0),
            cors_origins=cors_origins(env),
            project_id=project,
            database=_database(env),
            collection=_collection(env, "FIRESTORE_COLLECTION", "assistants"),
            persist_timeout_seconds=_seconds(env, "PERSIST_TIMEOUT_SECONDS", 5),
            secret_manager=_reads_secrets(env),
            secrets_project=_secrets_project(env, project),
            key_cache_seconds=_seconds(env, "KEY_CACHE_SECONDS", 300, minimum=0),
            secret_timeout_seconds=_seconds(env, "SECRET_TIMEOUT_SECONDS", 3),
            auth=AuthSettings.from_env(env, project),
            max_streams=_integer(env, "MAX_STREAMS", DEFAULT_MAX_STREAMS, minimum=1),
            send_timeout_seconds=_seconds(env, "SEND_TIMEOUT_SECONDS", 30),
        )


@dataclass(frozen=True)
class ServerSettings:
    """The gunicorn level (assistant/server.py, assistant/worker.py).

    Unlike `Settings`, read once, when the server starts: a value that cannot
    be used stops the start instead of failing each request.
    """

    request_read_timeout_seconds: float  # time a request may take to arrive (head and body)
    project_id: str  # for the trace link of the worker's own log lines
    # functions-framework's own two, which it reads with int() and no check: 0 workers
    # serve nothing, without a word.
    threads: int
    workers: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if env is None else env
        return cls(
            # Below a second an honest client on a slow link would be dropped.
            request_read_timeout_seconds=_seconds(
                env, "REQUEST_READ_TIMEOUT_SECONDS", 10, minimum=1
            ),
            project_id=project_id(env),
            threads=_digits(env, "THREADS", (os.cpu_count() or 1) * 4, maximum=10_000),
            workers=_digits(env, "WORKERS", 1, maximum=1_000),
        )


_fixed: Settings | None = None


def request_settings() -> Settings:
    """The settings a request runs with (module docstring). ConfigError if they are invalid."""
    return _fixed or Settings.from_env()


def fix_for_process() -> None:
    """A server worker, once its app is loaded: read the settings once, for every request.

    Invalid settings are not fixed: each request then reports them, as before.
    """
    global _fixed
    try:
        _fixed = Settings.from_env()
    except ConfigError:
        _fixed = None
