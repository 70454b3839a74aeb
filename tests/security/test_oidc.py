"""Console login through an OpenID Connect provider: a fake provider at the edge (a real HTTP server) and a
live Accord on SQLite and PostgreSQL. A good sign-in lands on the console with the mapped role; every broken
or hostile answer is refused with a clear page, creates nobody, starts no session and is audited."""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from alembic import command
from pydantic import SecretStr
from sqlalchemy import func, inspect, select

from accord.audit import service as audit
from accord.config import Settings
from accord.db import migrate
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import oidc, users
from accord.security.models import ConsoleSession, OidcLogin, User
from conftest import LiveAccord, free_port, make_settings, running_accord
from console.helpers import csrf_of, logged_in, login, make_user
from security.fake_oidc import (
    CLIENT_ID,
    CLIENT_SECRET,
    KEY,
    NEW_KEY,
    OTHER_KEY,
    FakeProvider,
    running_provider,
    sign_in,
)

ROLE_MAP = {"accord-admins": "admin", "accord-analysts": "analyst", "accord-agents": "agent"}


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with running_provider() as fake:
        yield fake


def oidc_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest, issuer: str) -> Settings:
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    return make_settings(
        backend,
        tmp_path,
        request,
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret_file=secret,
        oidc_role_map=ROLE_MAP,
        oidc_name="Corp SSO",
        oidc_timeout_seconds=3,
        rate_limit_login="",
    )


@pytest.fixture
def site(backend: str, tmp_path: Path, request: pytest.FixtureRequest, provider: FakeProvider) -> Iterator[LiveAccord]:
    rt = Runtime.create(oidc_settings(backend, tmp_path, request, provider.issuer))
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as accord:
            yield accord
    finally:
        rt.close()


def count(rt: Runtime, what: Any) -> int:
    with rt.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(what)) or 0)


def audited(rt: Runtime, action: str) -> list[dict[str, Any]]:
    with rt.db.read() as session:
        return [
            r.body for r in reversed(audit.records(session, audit.Filters(action=action))) if r.body["action"] == action
        ]


def test_a_sign_in_lands_on_the_console_with_the_mapped_role(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        page = client.get("/console/login")
        assert 'id="oidc-login"' in page.text
        assert "Log in with Corp SSO" in page.text
        answer, _ = sign_in(client, next_path="/console/segments")
        assert answer.status_code == 200, answer.text
        assert 'http-equiv="refresh" content="0;url=/console/segments"' in answer.text
        assert "accord_console" in client.cookies
        assert "accord_oidc" not in client.cookies  # the sign-in's browser cookie is gone
        home = client.get("/console")
        assert home.status_code == 200
        assert "alice@corp.example" in home.text
        assert '<span class="role">agent</span>' in home.text
    with site.rt.db.read() as session:
        user = session.scalar(select(User).where(User.oidc_subject == "alice-0001"))
        assert user is not None
        assert (user.email, user.role, user.oidc_issuer, user.password_hash) == (
            "alice@corp.example",
            "agent",
            provider.issuer,
            "",
        )
    assert count(site.rt, OidcLogin) == 0  # taken by the callback
    (success,) = audited(site.rt, "console.login")
    assert (success["actor_type"], success["actor_id"], success["actor_role"]) == ("user", user.id, "agent")
    assert success["details"] == {"method": "oidc"}
    assert b"alice" not in json.dumps(success).encode()


def test_logging_out_ends_the_session_at_the_provider_too(site: LiveAccord, provider: FakeProvider) -> None:
    """The provider's session would let the next person at a shared counter sign in again with one click: a
    single sign-on session's logout goes on to the provider's end-session endpoint, with the ID token as a
    hint and the way back to the login page."""
    with site.client() as client:
        answer, _ = sign_in(client)
        assert answer.status_code == 200, answer.text
        (id_token,) = provider.issued
        out = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console").text)})
        assert out.status_code == 200, out.text
        found = re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', out.text)
        assert found is not None
        target = html.unescape(found.group(1))
        assert f'href="{found.group(1)}"' in out.text  # and a link, should the page not go on by itself
        assert target.startswith(f"{provider.issuer}/logout?tenant=corp&")  # the endpoint's own query kept
        query = dict(parse_qsl(urlsplit(target).query))
        assert query == {
            "tenant": "corp",
            "client_id": CLIENT_ID,
            "post_logout_redirect_uri": f"{site.base_url}/console/login",
            "id_token_hint": id_token,
        }
        assert out.headers["cache-control"] == "no-store"
        assert client.get("/console", follow_redirects=False).status_code == 303  # signed out here already
        back = httpx.get(target, timeout=10)  # the browser goes on to the provider, which sends it back
        assert back.status_code == 302
        assert back.headers["location"] == f"{site.base_url}/console/login"
    assert provider.logouts == [query]
    assert count(site.rt, ConsoleSession) == 0
    (logout,) = audited(site.rt, "console.logout")
    assert id_token not in json.dumps(logout)


def test_without_an_end_session_endpoint_logging_out_stays_here(site: LiveAccord, provider: FakeProvider) -> None:
    provider.end_session = False
    with site.client() as client:
        sign_in(client)
        out = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console").text)})
        assert (out.status_code, out.headers["location"]) == (303, "/console/login")
    assert count(site.rt, ConsoleSession) == 0
    assert provider.logouts == []


def test_a_password_login_logs_out_here_only(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        token = logged_in(client, site.rt, "agent")
        with site.rt.db.read() as session:
            assert session.scalar(select(ConsoleSession.id_token)) is None
        out = client.post("/console/logout", data={"csrf": token})
        assert (out.status_code, out.headers["location"]) == (303, "/console/login")
    assert provider.logouts == []


def test_the_same_subject_is_the_same_user_and_the_role_follows_the_provider(
    site: LiveAccord, provider: FakeProvider
) -> None:
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
    provider.claims["groups"] = ["staff", "accord-analysts"]
    provider.claims["email"] = "alice.new@corp.example"  # a changed email does not make a new user
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
        assert '<span class="role">analyst</span>' in client.get("/console").text
    with site.rt.db.read() as session:
        (user,) = session.scalars(select(User)).all()
    assert (user.role, user.email) == ("analyst", "alice@corp.example")


def test_a_password_user_with_the_same_email_is_not_taken_over(site: LiveAccord, provider: FakeProvider) -> None:
    make_user(site.rt, "admin", email="alice@corp.example")
    with site.client() as client:
        answer, _ = sign_in(client)
        assert answer.status_code == 409
        assert "not linked to this provider" in answer.text
        assert "accord_console" not in client.cookies
    with site.rt.db.read() as session:
        (user,) = session.scalars(select(User)).all()
    assert (user.role, user.oidc_subject) == ("admin", None)
    # Linked by an administrator, the same sign-in is that user, with the provider's role.
    with site.rt.db.unit_of_work() as session:
        users.link_oidc(session, email="alice@corp.example", issuer=provider.issuer, subject="alice-0001")
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
        assert '<span class="role">agent</span>' in client.get("/console").text
    # ... and the password still works too.
    with site.client() as client:
        assert login(client, "alice@corp.example").status_code == 303


def refused(site: LiveAccord, provider: FakeProvider, status: int, message: str) -> None:
    """The sign-in gets the login page with `message`, and nothing is created."""
    with site.client() as client:
        answer, _ = sign_in(client)
        assert answer.status_code == status, answer.text
        assert message in answer.text
        assert 'id="oidc-login"' in answer.text  # the login page, to try again or use a password
        assert "accord_console" not in client.cookies
        assert client.get("/console").status_code == 303
    assert count(site.rt, User) == 0
    assert count(site.rt, ConsoleSession) == 0
    assert audited(site.rt, "console.login") == []
    (failure,) = audited(site.rt, "console.login_failed")
    assert (failure["actor_type"], failure["actor_id"], failure["details"]["method"]) == ("anonymous", None, "oidc")


def _now() -> int:
    return int(time.time())


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ({"iss": "https://evil.example"}, "issued by another provider (iss)"),
        ({"aud": "another-client"}, "issued for another client (aud)"),
        ({"aud": None}, "no aud claim"),
        ({"exp": _now() - 3600, "iat": _now() - 4000}, "it has expired"),
        ({"exp": None}, "no exp claim"),
        ({"nonce": "a-nonce-from-another-sign-in"}, "does not belong to this sign-in (nonce)"),
        ({"nonce": None}, "no nonce claim"),
        ({"sub": None}, "no sub claim"),
        ({"sub": "x" * 300}, "sub claim is not an identifier"),
        ({"sub": 42}, "sub"),
        ({"nbf": _now() + 3600}, "not valid yet"),
        ({"iat": _now() + 3600}, "issued in the future (iat)"),
        ({"exp": "soon"}, "exp"),
        ({"aud": ["another-client", CLIENT_ID]}, "no azp claim"),
        ({"aud": ["another-client", CLIENT_ID], "azp": "another-client"}, "issued for another client (azp)"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "does not match its access token (at_hash)"),
    ],
    ids=[
        "issuer",
        "audience",
        "no-audience",
        "expired",
        "no-expiry",
        "nonce",
        "no-nonce",
        "no-sub",
        "long-sub",
        "numeric-sub",
        "not-yet",
        "future-iat",
        "text-exp",
        "audiences-without-azp",
        "azp",
        "at-hash",
    ],
)
def test_a_wrong_id_token_is_refused(
    site: LiveAccord, provider: FakeProvider, tamper: dict[str, Any], message: str
) -> None:
    provider.tamper = tamper
    refused(site, provider, 401, message)


def test_a_bad_signature_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    provider.signing_key = OTHER_KEY  # same key id, another key
    refused(site, provider, 401, "its signature does not match")


def test_a_key_the_provider_does_not_publish_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    provider.signing_key = OTHER_KEY
    provider.header = {"kid": "key-2"}
    refused(site, provider, 401, "signed with a key the provider does not publish")


def _unsigned(claims: dict[str, Any], alg: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': alg, 'kid': 'key-1'})}.{part(claims)}.{'' if alg == 'none' else 'c2ln'}"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_an_unsigned_or_mac_token_is_refused(site: LiveAccord, provider: FakeProvider, alg: str) -> None:
    now = _now()
    provider.id_token = _unsigned(
        {
            "iss": provider.issuer,
            "aud": CLIENT_ID,
            "sub": "alice-0001",
            "iat": now,
            "exp": now + 300,
            "groups": ["accord-admins"],
        },
        alg,
    )
    refused(site, provider, 401, "is not a signed JWT with one of RS256")


@pytest.mark.parametrize("groups", [None, [], ["strangers"], "strangers", 42, [{"x": 1}]])
def test_a_person_without_a_mapped_role_is_refused(site: LiveAccord, provider: FakeProvider, groups: Any) -> None:
    provider.tamper = {"groups": groups} if groups is not None else {}
    if groups is None:
        del provider.claims["groups"]
    refused(site, provider, 403, "has no Accord role: its groups claim holds none of the values")


def test_a_denial_at_the_provider_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    provider.deny = "access_denied"
    refused(site, provider, 401, "did not sign you in (access_denied)")


def test_a_replayed_callback_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        answer, callback = sign_in(client)
        assert answer.status_code == 200
        again = client.get(callback)
    assert again.status_code == 400
    assert "expired, was used already, or began in another browser" in again.text
    assert count(site.rt, ConsoleSession) == 1
    assert provider.token_requests == 1  # the replay never reached the provider


def test_a_callback_in_another_browser_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    """Login CSRF: someone else's callback URL, opened in a victim's browser, logs nobody in."""
    with site.client() as attacker:
        begin = attacker.get("/console/login/oidc")
        callback = httpx.get(begin.headers["location"]).headers["location"]
    with site.client() as victim:
        answer = victim.get(callback)
        assert answer.status_code == 400
        assert "began in another browser" in answer.text
        assert "accord_console" not in victim.cookies
    assert count(site.rt, User) == 0
    assert provider.token_requests == 0


def test_an_expired_sign_in_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        begin = client.get("/console/login/oidc")
        callback = httpx.get(begin.headers["location"]).headers["location"]
        with site.rt.db.unit_of_work() as session:
            for row in session.scalars(select(OidcLogin)):
                row.expires_at = row.created_at
        answer = client.get(callback)
    assert answer.status_code == 400
    assert count(site.rt, User) == 0


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"state": "x" * 201, "code": "c"},
        {"state": "unknown", "code": "c"},
        {"state": "s", "code": "c" * 5000},
        {"state": "s\x00", "code": "c"},
        {"state": "s", "error": "<script>alert(1)</script>"},
    ],
)
def test_a_hostile_callback_is_refused(site: LiveAccord, provider: FakeProvider, query: dict[str, str]) -> None:
    with site.client() as client:
        answer = client.get("/console/login/oidc/callback", params=query)
    assert answer.status_code == 400
    assert "<script>alert" not in answer.text
    assert count(site.rt, User) == 0
    assert provider.token_requests == 0


def test_a_hostile_next_stays_in_the_console(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        answer, _ = sign_in(client, next_path="https://evil.example/")
        assert 'content="0;url=/console"' in answer.text


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"<html>not json</html>", "discovery document is not JSON"),
        (b"[1, 2]", "discovery document is not a JSON object"),
        (b'{"issuer": 5}', "discovery document is not valid"),
        (json.dumps({"issuer": "x"}).encode(), "discovery document is not valid"),
        (b" " * (oidc.MAX_DOCUMENT + 1), "discovery document is larger than 512 KiB"),
    ],
    ids=["not-json", "not-object", "wrong-type", "incomplete", "oversized"],
)
def test_a_malformed_discovery_document_is_refused(
    site: LiveAccord, provider: FakeProvider, document: bytes, message: str
) -> None:
    provider.discovery = document
    with site.client() as client:
        answer = client.get("/console/login/oidc")
    assert answer.status_code == 502
    assert message in answer.text
    assert "a password login still works" in answer.text
    assert count(site.rt, OidcLogin) == 0
    (failure,) = audited(site.rt, "console.login_failed")
    assert failure["details"] == {"method": "oidc", "reason": "oidc_provider_invalid"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"issuer": "https://evil.example"}, "names the issuer &#39;https://evil.example&#39;, not the configured"),
        ({"id_token_signing_alg_values_supported": ["HS256", "none"]}, "MUST be included in"),
        ({"token_endpoint": "http://evil.example/token"}, "MUST use"),
        ({"response_types_supported": ["token"]}, "does not offer the authorization code flow"),
        ({"end_session_endpoint": "javascript:alert(1)"}, "names an end-session endpoint that is not an https URL"),
        ({"end_session_endpoint": "http://evil.example/logout"}, "not an https URL (http only for localhost)"),
        ({"end_session_endpoint": ["https://x.example"]}, "names an end-session endpoint that is not"),
    ],
    ids=["issuer", "algorithms", "insecure-endpoint", "no-code-flow", "script-logout", "http-logout", "list-logout"],
)
def test_a_discovery_document_that_does_not_fit_is_refused(
    site: LiveAccord, provider: FakeProvider, change: dict[str, Any], message: str
) -> None:
    provider.discovery = json.dumps({**provider.metadata(), **change}).encode()
    with site.client() as client:
        answer = client.get("/console/login/oidc")
    assert answer.status_code == 502
    assert message in answer.text


def test_a_provider_that_is_down_is_refused(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rt = Runtime.create(oidc_settings(backend, tmp_path, request, f"http://127.0.0.1:{free_port()}"))
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as site, site.client() as client:
            page = client.get("/console/login")
            assert 'id="oidc-login"' in page.text  # the button shows; the provider is asked only on a click
            answer = client.get("/console/login/oidc")
            assert answer.status_code == 502
            assert "The sign-in provider cannot be reached" in answer.text
            assert "log in with a password" in answer.text
            assert count(rt, OidcLogin) == 0
            assert audited(rt, "console.login_failed")[0]["details"]["reason"] == "oidc_unreachable"
    finally:
        rt.close()


def test_an_agent_signed_in_through_the_provider_cannot_reach_configuration(site: LiveAccord) -> None:
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
        for path in ("/console/admin", "/console/admin/users", "/console/admin/sources", "/console/admin/consent"):
            answer = client.get(path)
            assert answer.status_code == 403, path
            assert "The agent role cannot open this page" in answer.text


def test_without_configuration_there_is_no_button_and_no_sign_in(live: LiveAccord) -> None:
    with live.client() as client:
        assert 'id="oidc-login"' not in client.get("/console/login").text
        for path in ("/console/login/oidc", "/console/login/oidc/callback?state=s&code=c"):
            answer = client.get(path)
            assert answer.status_code == 404
            assert "Single sign-on is not set up here" in answer.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"oidc_issuer": "http://idp.example"}, "must be an https URL"),
        ({"oidc_issuer": "https://idp.example/?x=1"}, "must be an https URL"),
        ({"oidc_client_id": ""}, "ACCORD_OIDC_CLIENT_ID is needed"),
        ({"oidc_scopes": "email profile"}, "must include openid"),
        ({"oidc_role_map": {}}, "maps no claim value to a role"),
        ({"oidc_role_map": {"g": "root"}}, "maps 'g' to 'root'"),
        ({"oidc_redirect_url": "http://accord.example/cb"}, "ACCORD_OIDC_REDIRECT_URL must be an https URL"),
        ({"oidc_client_secret": "x"}, "not both"),
        ({"oidc_client_secret_file": Path("/nonexistent/secret")}, "cannot be read"),
    ],
)
def test_wrong_settings_are_named_at_start(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    values: dict[str, Any] = {
        "oidc_issuer": "https://idp.example",
        "oidc_client_id": "c",
        "oidc_client_secret_file": secret,
        "oidc_role_map": {"g": "agent"},
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        oidc.OidcConfig.from_settings(Settings(data_dir=tmp_path, **values))


def test_the_client_secret_is_not_in_the_configuration_repr(tmp_path: Path) -> None:
    config = oidc.OidcConfig.from_settings(
        Settings(
            data_dir=tmp_path,
            oidc_issuer="https://idp.example",
            oidc_client_id="c",
            oidc_client_secret="very-secret-value",
            oidc_role_map={"g": "agent"},
        )
    )
    assert config is not None
    assert config.client_secret == "very-secret-value"
    assert "very-secret-value" not in repr(config)


def test_the_role_claim_may_be_nested_and_the_first_mapping_wins(tmp_path: Path) -> None:
    config = oidc.OidcConfig.from_settings(
        Settings(
            data_dir=tmp_path,
            oidc_issuer="https://idp.example",
            oidc_client_id="c",
            oidc_role_claim="realm_access.roles",
            oidc_role_map={"auditors": "auditor", "admins": "admin"},
        )
    )
    assert config is not None
    assert oidc.role_for(config, {"realm_access": {"roles": ["admins", "auditors"]}}) == "auditor"
    assert oidc.role_for(config, {"realm_access": {"roles": ["admins"]}}) == "admin"
    assert oidc.role_for(config, {"realm_access": "admins"}) is None
    assert oidc.role_for(config, {}) is None


def test_a_disabled_user_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
    with site.rt.db.unit_of_work() as session:
        users.set_disabled(session, email="alice@corp.example", disabled=True, now=utcnow())
    with site.client() as client:
        answer, _ = sign_in(client)
        assert answer.status_code == 403
        assert "your Accord account is disabled" in answer.text
        assert client.get("/console").status_code == 303
    assert count(site.rt, ConsoleSession) == 0


def test_a_sign_in_without_an_email_is_refused(site: LiveAccord, provider: FakeProvider) -> None:
    del provider.claims["email"]
    refused(site, provider, 403, "the provider sent no email address")


@pytest.mark.parametrize("method", ["client_secret_post", "none"])
def test_the_client_authenticates_as_the_provider_asks(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, provider: FakeProvider, method: str
) -> None:
    """A secret from the environment sent in the form (client_secret_post), or a public client without a
    secret (PKCE alone); the default, client_secret_basic with a secret file, is the other tests'."""
    provider.auth_method = method
    settings = oidc_settings(backend, tmp_path, request, provider.issuer).model_copy(
        update={
            "oidc_client_secret_file": None,
            "oidc_client_secret": SecretStr(CLIENT_SECRET) if method == "client_secret_post" else None,
        }
    )
    rt = Runtime.create(settings)
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as site, site.client() as client:
            answer, _ = sign_in(client)
            assert answer.status_code == 200, answer.text
            assert client.get("/console").status_code == 200
    finally:
        rt.close()
    # A provider that wants another method than the client can do refuses, and Accord says so.
    provider.auth_method = "client_secret_basic" if method == "none" else "none"
    rt = Runtime.create(settings)
    try:
        with running_accord(rt) as site, site.client() as client:
            answer, _ = sign_in(client)
            assert answer.status_code == 401
            assert "refused to finish this sign-in (invalid_client)" in answer.text
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("key_set", "message"),
    [
        (b"not json", "key set is not JSON"),
        (b'{"keys": "none"}', "key set is malformed"),
        (b'{"keys": [{"kty": "RSA", "n": "x"}]}', "key set is malformed"),
        (b'{"keys": []}', "key set is malformed"),
        (b" " * (oidc.MAX_DOCUMENT + 1), "key set is larger than 512 KiB"),
    ],
    ids=["not-json", "not-a-list", "bad-key", "empty", "oversized"],
)
def test_a_broken_key_set_is_refused(site: LiveAccord, provider: FakeProvider, key_set: bytes, message: str) -> None:
    provider.jwks = key_set
    with site.client() as client:
        answer, _ = sign_in(client)
    assert answer.status_code in {401, 502}
    assert message in answer.text
    assert count(site.rt, User) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rotated_provider_keys_are_fetched_again_at_most_every_few_seconds(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, provider: FakeProvider
) -> None:
    rt = Runtime.create(oidc_settings(backend, tmp_path, request, provider.issuer))
    assert rt.oidc is not None
    clock = Clock()
    rt.oidc = oidc.OidcProvider(rt.oidc.config, clock=clock)  # the caches' clock, a fake at the edge
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as site, site.client() as client:
            assert sign_in(client)[0].status_code == 200
            assert provider.key_set_requests == 1
            assert sign_in(client)[0].status_code == 200
            assert provider.key_set_requests == 1  # kept
            # The provider rotates: a new key signs, both are published. Within seconds of the last fetch a
            # key id Accord does not know is refused without asking again (a flood of made-up key ids
            # cannot make Accord hammer the provider) ...
            provider.published, provider.signing_key = [KEY, NEW_KEY], NEW_KEY
            answer, _ = sign_in(client)
            assert answer.status_code == 401
            assert "signed with a key the provider does not publish" in answer.text
            assert provider.key_set_requests == 1
            # ... and after that, the key set is fetched again and the new key works.
            clock.now += oidc.JWKS_REFETCH_AFTER + 1
            assert sign_in(client)[0].status_code == 200
            assert provider.key_set_requests == 2
            # An hour on, the discovery document and the key set are read again.
            clock.now += oidc.DISCOVERY_TTL + 1
            assert sign_in(client)[0].status_code == 200
            assert provider.key_set_requests == 3
    finally:
        rt.close()


def test_the_users_page_marks_single_sign_on_users(site: LiveAccord) -> None:
    with site.client() as client:
        assert sign_in(client)[0].status_code == 200
    with site.client() as admin:
        logged_in(admin, site.rt, "admin")
        page = admin.get("/console/admin/users").text
    row = next(line for line in page.splitlines() if "alice@corp.example" in line)
    assert "single sign-on: the provider sets the role at each sign-in" in row
    assert page.count("single sign-on: the provider") == 1  # not the password admin


def test_migration_0031_adds_the_sessions_id_token_and_takes_it_away(rt: Runtime) -> None:
    def columns() -> set[str]:
        with rt.db.engine.connect() as connection:
            return {c["name"] for c in inspect(connection).get_columns("console_sessions")}

    assert "id_token" in columns()
    config = migrate._config()
    with rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = rt.db.keyring
        command.downgrade(config, "0030")
    assert "id_token" not in columns()
    migrate.upgrade(rt.db)
    assert "id_token" in columns()
