"""scripts/smoke.sh against the real service, in each auth mode it has to handle."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .firebase_tokens import PROJECT, CertsServer, SigningKey, claims

ROOT = Path(__file__).resolve().parent.parent


def smoke(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/smoke.sh", url],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "SMOKE_TIMEOUT": "20", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("smoke-key")


@pytest.fixture
def firebase_service(fake: FakeUpstream, key: SigningKey) -> Iterator[str]:
    with CertsServer(key) as certs:
        env = {"AUTH_MODE": "firebase", "FIREBASE_CERTS_URL": certs.url,
               "FIREBASE_PROJECT_ID": PROJECT}  # fmt: skip
        with running_service(env) as service:
            yield service.url


def test_an_open_local_endpoint_passes_every_check(fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["One ", "line."]), Script(tokens=["Legacy."]))
    with running_service({}) as service:
        result = smoke(service.url)
    assert result.returncode == 0, result.stderr
    assert "endpoint is open" in result.stdout
    assert "ok: smoke passed" in result.stdout
    assert len(fake.requests) == 2  # the stream and the legacy call; the probes called nothing


def test_firebase_without_a_token_checks_health_and_the_401(firebase_service: str, fake) -> None:
    result = smoke(firebase_service, REQUIRE_AUTH="1")
    assert result.returncode == 0, result.stderr
    assert "401 unauthenticated" in result.stdout
    assert "set AUTH_TOKEN to check a stream" in result.stdout
    assert fake.requests == []


def test_firebase_with_a_token_streams(firebase_service: str, fake, key: SigningKey) -> None:
    fake.push(Script(tokens=["Signed ", "in."]), Script(tokens=["Legacy."]))
    result = smoke(firebase_service, REQUIRE_AUTH="1", AUTH_TOKEN=key.sign(claims("smoker")))
    assert result.returncode == 0, result.stderr
    assert "ok: stream:" in result.stdout
    assert "ok: smoke passed" in result.stdout


def test_require_auth_fails_an_open_endpoint(fake: FakeUpstream) -> None:
    with running_service({}) as service:
        result = smoke(service.url, REQUIRE_AUTH="1")
    assert result.returncode == 1
    assert "it is open" in result.stderr
    assert fake.requests == []
