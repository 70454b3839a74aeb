"""Transport and abuse: security headers, CORS on the tracking API, rate limits, body limits, TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from accord.config import Settings
from accord.db import migrate
from accord.errors import ApiError
from accord.runtime import Runtime
from accord.security.limits import RateLimits
from accord.security.service import create_token
from accord.sources.service import create_source
from conftest import REQUIRE_SERVICES, LiveAccord, free_port, log_rows, make_settings, running_accord

TRACK = {"userId": "u1", "event": "Tick"}


@pytest.fixture
def limited(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveAccord]:
    settings = make_settings(
        backend,
        tmp_path,
        request,
        rate_limit_tracking="3/hour",
        rate_limit_api="2/hour",
        cors_origins=["https://shop.example"],
    )
    rt = Runtime.create(settings)
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as accord:
            yield accord
    finally:
        rt.close()


def test_every_answer_carries_the_security_headers(live: LiveAccord) -> None:
    with live.client() as client:
        answers = [
            client.get("/healthz"),
            client.post("/v1/track", json=TRACK, auth=(live.write_key, "")),
            client.post("/v1/track", json=TRACK),
            client.get("/api/v1/profiles/user_id:u1"),
            client.get("/nowhere"),
        ]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert "strict-transport-security" not in answer.headers  # plain HTTP


def test_browsers_may_send_tracking_calls_from_any_site_by_default(live: LiveAccord) -> None:
    preflight = {"Origin": "https://blog.example", "Access-Control-Request-Method": "POST"}
    with live.client() as client:
        tracking = client.options("/v1/batch", headers=preflight)
        rest = client.options("/api/v1/profiles/user_id:u1", headers=preflight)
    assert tracking.status_code == 200
    assert tracking.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in rest.headers


def test_cors_origins_can_be_narrowed(limited: LiveAccord) -> None:
    with limited.client() as client:
        allowed = client.options(
            "/v1/track", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        )
        other = client.options(
            "/v1/track", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


def test_a_write_key_over_its_rate_gets_429_and_loses_nothing_accepted(limited: LiveAccord) -> None:
    with limited.rt.db.unit_of_work() as session:
        other_key = create_source(session, name="other").write_key
    with limited.client() as client:
        statuses = [client.post("/v1/track", json=TRACK, auth=(limited.write_key, "")).status_code for _ in range(3)]
        refused = client.post("/v1/track", json=TRACK, auth=(limited.write_key, ""))
        other = client.post("/v1/track", json=TRACK, auth=(other_key, ""))
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert "write key" in refused.json()["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert other.status_code == 200  # limits are per write key
    limited.wait_processed()
    with limited.api() as api:
        profile = api.get("/api/v1/profiles/user_id:u1").json()
    assert profile["counts"]["events"] == {"Tick": 4}  # three from the first key, one from the other


def test_a_token_over_its_rate_gets_429(limited: LiveAccord) -> None:
    with limited.rt.db.unit_of_work() as session:
        fresh = create_token(session, role="agent").token
    with limited.api() as api:
        statuses = [api.get("/api/v1/profiles/user_id:nobody").status_code for _ in range(3)]
        answer = api.get("/api/v1/profiles/user_id:nobody")
    with limited.client(headers={"Authorization": f"Bearer {fresh}"}) as client:
        own_budget = client.get("/api/v1/profiles/user_id:nobody")
    assert statuses == [404, 404, 429]
    assert answer.status_code == 429
    assert answer.json()["code"] == "rate_limited"
    assert "retry-after" in answer.headers
    assert own_budget.status_code == 404


def test_request_bodies_are_bounded_on_every_route(live: LiveAccord) -> None:
    with live.api() as client:
        answer = client.post("/api/v1/profiles/user_id:u1", content=b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413
    assert answer.json()["code"] == "request_too_large"
    assert log_rows(live.rt) == 0


def test_a_caller_without_a_token_gets_401_before_any_size_check(live: LiveAccord) -> None:
    oversized = b"x" * (1024 * 1024 + 1)
    answer = httpx.post(f"{live.base_url}/api/v1/consent/notices", content=oversized)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_rate_limit_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ACCORD_RATE_LIMIT_TRACKING"):
        RateLimits(tracking="lots", api="", storage_url="memory://")
    unlimited = RateLimits(tracking="0", api="", storage_url="memory://")
    for _ in range(1000):
        unlimited.check("tracking", "src")


def test_redis_counters_are_shared_by_every_process() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError as error:
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis is not reachable ({error}); ACCORD_TEST_REQUIRE_SERVICES=1 demands it")
        pytest.skip(f"Redis is not reachable at 127.0.0.1:6379 ({error})")
    first = RateLimits(tracking="2/hour", api="", storage_url="redis://127.0.0.1:6379/0")
    second = RateLimits(tracking="2/hour", api="", storage_url="redis://127.0.0.1:6379/0")
    key = f"src_{uuid.uuid4().hex}"
    first.check("tracking", key)
    second.check("tracking", key)
    with pytest.raises(ApiError) as refused:
        first.check("tracking", key)
    assert refused.value.status == 429


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_accord_up_serves_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "ACCORD_DATA_DIR": str(tmp_path / "data"),
        "ACCORD_PORT": str(port),
        "ACCORD_TLS_CERTFILE": str(cert),
        "ACCORD_TLS_KEYFILE": str(key),
    }
    trust = ssl.create_default_context(cafile=str(cert))
    server = subprocess.Popen([sys.executable, "-m", "accord", "up"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else "exited"
                assert time.monotonic() < deadline, "accord up did not start with TLS"
                time.sleep(0.1)
        assert answer.json() == {"status": "ok"}
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        server.terminate()
        server.wait(timeout=20)
        if server.stderr:
            server.stderr.close()


def test_half_a_tls_setting_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp_path / "data"), "ACCORD_TLS_CERTFILE": str(tmp_path / "c.pem")}
    result = subprocess.run(
        [sys.executable, "-m", "accord", "up"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "ACCORD_TLS_KEYFILE" in result.stdout + result.stderr


def test_settings_default_to_open_tracking_cors_and_memory_counters() -> None:
    settings = Settings()
    assert settings.cors_origins == ["*"]
    assert settings.rate_limit_storage == "memory://"
