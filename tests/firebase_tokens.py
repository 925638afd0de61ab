"""Firebase-style ID tokens signed in the test, and a certs endpoint on loopback.

The production path of the service, end to end: an RSA key made here, a
self-signed certificate for it served as Google's securetoken endpoint does
(a JSON map `{kid: PEM}` with `Cache-Control: max-age`), and RS256 tokens
signed with google-auth's own signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from .certificates import self_signed

PROJECT = "demo-test"
ISSUER = f"https://securetoken.google.com/{PROJECT}"


class SigningKey:
    """An RSA key, its certificate, and the key id that names it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        cert = self_signed(key, "securetoken.test")
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=kid or self.kid)
        return jwt.encode(signer, claims).decode()


def claims(uid: str = "user-1", **overrides: Any) -> dict[str, Any]:
    """The claims of a fresh Firebase ID token for `uid`; None in overrides drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": PROJECT,
        "auth_time": now - 60,
        "user_id": uid,
        "sub": uid,
        "iat": now - 10,
        "exp": now + 3600,
        "email": f"{uid}@example.com",
        "name": f"User {uid}",
        "firebase": {"sign_in_provider": "password"},
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def _segment(data: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")


def unsigned(payload: dict[str, Any]) -> str:
    """A token like the Auth emulator's: `alg: none`, no kid, no signature."""
    return (_segment({"alg": "none", "typ": "JWT"}) + b"." + _segment(payload) + b".").decode()


def nested_past_the_parsers_depth(segment: str) -> str:
    """A token whose header or payload is JSON nested deeper than json.loads recurses
    (~6.7 KB, under the token's bound): google-auth's decoding raises RecursionError."""
    deep = base64.urlsafe_b64encode(b"[" * 2500 + b"]" * 2500).rstrip(b"=").decode()
    plain = base64.urlsafe_b64encode(b"{}").rstrip(b"=").decode()
    head, payload = (deep, plain) if segment == "header" else (plain, deep)
    return f"{head}.{payload}.c2ln"


def hs256_with_cert_as_secret(key: SigningKey, payload: dict[str, Any]) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the public cert."""
    head = _segment({"alg": "HS256", "typ": "JWT", "kid": key.kid}) + b"." + _segment(payload)
    mac = hmac.new(key.cert_pem.encode(), head, hashlib.sha256).digest()
    return (head + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


class CertsServer:
    """Serves `{kid: cert PEM}` like Google's securetoken endpoint; counts its fetches.

    `status` other than 200 makes it answer that status instead; `raw_body`
    replaces the JSON map with any bytes; `delay` seconds pass before each answer, and
    `drip` seconds between each byte of its body.
    """

    def __init__(self, *keys: SigningKey, max_age: int = 3600) -> None:
        self.certs = {key.kid: key.cert_pem for key in keys}
        self.max_age = max_age
        self.status = 200
        self.raw_body: bytes | None = None
        self.delay = 0.0
        self.drip = 0.0  # seconds between the body's bytes, when set
        self.stopped = threading.Event()
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                time.sleep(server.delay)
                body = server.raw_body or json.dumps(server.certs).encode()
                if server.status != 200:
                    body = b"unavailable"
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Cache-Control", f"public, max-age={server.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not server.drip:
                    self.wfile.write(body)
                try:
                    for byte in body if server.drip else b"":
                        if server.stopped.is_set():
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(server.drip)
                except OSError:
                    pass  # the fetch gave up on it

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/certs"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> CertsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: from now on the endpoint is down (connection refused)."""
        self.stopped.set()  # a dripping answer too
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
