"""Console login: argon2 passwords, a server-side session in a strict cookie, CSRF on every form, logout,
lockout with backoff, per-address rate limits, and hostile input on the login form."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from accord.db import migrate
from accord.db.base import utcnow
from accord.db.engine import Database
from accord.db.models import Base
from accord.runtime import Runtime
from accord.security import users
from accord.security.models import ConsoleSession, User
from conftest import LiveAccord, make_settings, running_accord
from console.helpers import PASSWORD, csrf_of, login, make_user


def test_login_sets_a_strict_session_cookie_and_opens_the_console(live: LiveAccord) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        answer = login(client, email)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console"
        cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and "accord_console=" in v)
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP in this test; __Host- and Secure come with HTTPS
        home = client.get("/console")
    assert home.status_code == 200
    assert email in home.text
    assert "script-src 'self'" in home.headers["content-security-policy"]
    assert home.headers["cache-control"] == "no-store"
    secret = client.cookies["accord_console"]
    with live.rt.db.read() as session:
        stored = session.scalars(select(ConsoleSession.id_hash)).all()
        user = session.scalar(select(User).where(User.email == email))
    assert secret not in stored  # only its hash
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


@pytest.mark.parametrize("wrong", ["wrong password", "unknown"])
def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(live: LiveAccord, wrong: str) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        if wrong == "unknown":
            answer = login(client, "nobody@staff.example")
        else:
            answer = login(client, email, "not the password")
        assert answer.status_code == 401
        assert "The email or password is wrong" in answer.text
        assert "accord_console" not in client.cookies
        assert client.get("/console").status_code == 303


def test_repeated_failures_lock_the_account_with_growing_waits(live: LiveAccord) -> None:
    email = make_user(live.rt, "analyst")
    with live.client() as client:
        for _ in range(users.MAX_FAILURES):
            assert login(client, email, "guess").status_code == 401
        # Locked: now even the right password is refused, with the same answer as a wrong one.
        assert login(client, email).status_code == 401
        with live.rt.db.read() as session:
            user = session.scalar(select(User).where(User.email == email))
            assert user is not None
            assert user.locked_until is not None
            first_lock = user.locked_until - utcnow()
        assert login(client, email, "guess again").status_code == 401
        with live.rt.db.read() as session:
            user = session.scalar(select(User).where(User.email == email))
            assert user is not None
            assert user.locked_until is not None
            assert user.failed_logins == users.MAX_FAILURES  # tries while locked are not even checked
        # The lock passes (moved into the past here rather than waited for); the right password works.
        with live.rt.db.unit_of_work() as session:
            session.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
        assert login(client, email).status_code == 303
    with live.rt.db.read() as session:
        user = session.scalar(select(User).where(User.email == email))
        assert user is not None
        assert (user.failed_logins, user.locked_until) == (0, None)
    assert timedelta(0) < first_lock <= users.LOCK_BASE


def test_the_backoff_doubles_after_each_lock_and_is_capped() -> None:
    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    now = utcnow()
    with db.unit_of_work() as session:
        users.create_user(session, email="a@b.example", role="agent", password=PASSWORD, now=now)
        waits = []
        for _ in range(15):
            users.authenticate(session, email="a@b.example", password="x", now=now)
            user = users.find_user(session, "a@b.example")
            assert user is not None
            waits.append(user.locked_until - now if user.locked_until else timedelta(0))
            now = max(now, user.locked_until or now) + timedelta(seconds=1)  # wait the lock out
    assert waits[: users.MAX_FAILURES - 1] == [timedelta(0)] * (users.MAX_FAILURES - 1)
    assert waits[users.MAX_FAILURES - 1 : users.MAX_FAILURES + 2] == [users.LOCK_BASE * k for k in (1, 2, 4)]
    assert max(waits) == users.LOCK_MAX == waits[-1]
    db.dispose()


@pytest.mark.parametrize("problem", ["no token", "wrong token", "no cookie", "other site", "cross-site fetch"])
def test_the_login_form_refuses_forged_posts(live: LiveAccord, problem: str) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        token = csrf_of(client.get("/console/login").text)
        data = {"email": email, "password": PASSWORD, "csrf": token}
        headers = {}
        if problem == "no token":
            del data["csrf"]
        elif problem == "wrong token":
            data["csrf"] = "x" + token
        elif problem == "no cookie":
            client.cookies.clear()
        elif problem == "other site":
            headers["Origin"] = "https://evil.example"
        else:
            headers["Sec-Fetch-Site"] = "cross-site"
        answer = client.post("/console/login", data=data, headers=headers)
        assert answer.status_code == 403
        assert "accord_console" not in client.cookies


@pytest.mark.parametrize(
    ("target", "lands"),
    [
        ("/console/admin", "/console/admin"),
        ("https://evil.example/", "/console"),
        ("//evil.example", "/console"),
        ("/console/../api/v1/x", "/console"),
        ("/console?x=1", "/console"),
        ("/elsewhere", "/console"),
    ],
)
def test_login_only_goes_on_to_console_paths(live: LiveAccord, target: str, lands: str) -> None:
    email = make_user(live.rt, "admin")
    with live.client() as client:
        answer = login(client, email, next_path=target)
    assert answer.status_code == 303
    assert answer.headers["location"] == lands


def test_pages_without_a_session_send_the_browser_to_login(live: LiveAccord) -> None:
    with live.client() as client:
        answer = client.get("/console")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login?next=/console"
        htmx = client.get("/console", headers={"HX-Request": "true"})
        assert htmx.status_code == 401
        assert htmx.headers["hx-redirect"] == "/console/login"
        client.cookies.set("accord_console", "made-up")
        assert client.get("/console").status_code == 303


def test_logout_needs_the_csrf_token_and_ends_the_session_for_good(live: LiveAccord) -> None:
    email = make_user(live.rt, "auditor")
    with live.client() as client:
        assert login(client, email).status_code == 303
        token = csrf_of(client.get("/console").text)
        secret = client.cookies["accord_console"]
        assert client.post("/console/logout", data={}).status_code == 403
        assert client.post("/console/logout", data={"csrf": "nope"}).status_code == 403
        assert client.get("/console").status_code == 200  # still logged in
        answer = client.post("/console/logout", data={"csrf": token})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login"
        assert "accord_console" not in client.cookies
    with live.client() as replay:  # the old cookie, kept by an attacker, is worth nothing now
        replay.cookies.set("accord_console", secret)
        assert replay.get("/console").status_code == 303


def test_the_csrf_header_works_like_the_field(live: LiveAccord) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        login(client, email)
        token = csrf_of(client.get("/console").text)
        assert client.post("/console/logout", headers={"X-CSRF-Token": token}).status_code == 303


def test_idle_and_expired_sessions_end(live: LiveAccord) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        login(client, email)
        assert client.get("/console").status_code == 200
        idle = timedelta(minutes=live.rt.settings.console_idle_minutes)
        with live.rt.db.unit_of_work() as session:
            session.execute(update(ConsoleSession).values(last_seen_at=utcnow() - idle - timedelta(seconds=1)))
        assert client.get("/console").status_code == 303
        login(client, email)
        with live.rt.db.unit_of_work() as session:
            session.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert client.get("/console").status_code == 303


def test_disabling_a_user_or_changing_the_password_ends_their_sessions(live: LiveAccord) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        login(client, email)
        with live.rt.db.unit_of_work() as session:
            users.set_disabled(session, email=email, disabled=True, now=utcnow())
        assert client.get("/console").status_code == 303
        assert login(client, email).status_code == 401
        with live.rt.db.unit_of_work() as session:
            users.set_disabled(session, email=email, disabled=False, now=utcnow())
        assert login(client, email).status_code == 303
        with live.rt.db.unit_of_work() as session:
            users.set_password(session, email=email, password="a new and long password")
        assert client.get("/console").status_code == 303
        assert login(client, email).status_code == 401
        assert login(client, email, "a new and long password").status_code == 303


@pytest.mark.parametrize(
    ("email", "password", "status"),
    [
        ("a\x00b@staff.example", PASSWORD, 422),
        ("x" * 255, PASSWORD, 422),
        ("{email}", "p" * 1025, 422),
        ("{email}", "", 401),
        ("' OR 1=1 --", PASSWORD, 401),
        ("{email}", PASSWORD + "\x00", 422),
        ("ünïcødé@staff.example", "пароль пароль пароль", 401),
    ],
)
def test_hostile_login_input_is_refused_cleanly(live: LiveAccord, email: str, password: str, status: int) -> None:
    real = make_user(live.rt, "agent")
    with live.client() as client:
        answer = login(client, email.format(email=real), password)
    assert answer.status_code == status
    assert "text/html" in answer.headers["content-type"]


def test_an_oversized_login_body_is_refused(live: LiveAccord) -> None:
    with live.client() as client:
        answer = client.post("/console/login", content=b"email=" + b"a" * 70_000, headers={"Content-Type": "x"})
    assert answer.status_code == 413


@pytest.fixture
def limited(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveAccord]:
    settings = make_settings(backend, tmp_path, request, rate_limit_login="3/hour")
    rt = Runtime.create(settings)
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as accord:
            yield accord
    finally:
        rt.close()


def test_login_attempts_are_rate_limited_per_address(limited: LiveAccord) -> None:
    email = make_user(limited.rt, "agent")
    with limited.client() as client:
        for _ in range(3):
            assert login(client, email, "wrong").status_code == 401
        answer = login(client, email)
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) >= 1


def test_user_service_refuses_bad_users(rt: Runtime) -> None:
    now = utcnow()
    with rt.db.unit_of_work() as session:
        users.create_user(session, email=" Ann@Staff.Example ", role="agent", password=PASSWORD, now=now)
    cases = [
        ({"email": "ann@staff.example"}, "user_exists"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a@b.c\x00"}, "invalid_email"),
        ({"role": "root"}, "invalid_role"),
        ({"password": "short"}, "weak_password"),
        ({"password": "x" * 2000}, "invalid_password"),
    ]
    for change, code in cases:
        args = {"email": "new@staff.example", "role": "agent", "password": PASSWORD, **change}
        with pytest.raises(users.UserError) as caught, rt.db.unit_of_work() as session:
            users.create_user(session, now=now, **args)
        assert caught.value.code == code
    with rt.db.read() as session:
        assert [u.email for u in users.list_users(session)] == ["ann@staff.example"]


def test_httpx_client_follows_the_whole_flow(live: LiveAccord) -> None:
    """Log in following redirects, as a browser does."""
    email = make_user(live.rt, "analyst")
    with httpx.Client(base_url=live.base_url, follow_redirects=True) as client:
        page = client.get("/console")
        assert page.url.path == "/console/login"
        answer = client.post(
            "/console/login",
            data={"email": email, "password": PASSWORD, "csrf": csrf_of(page.text), "next": "/console"},
        )
        assert answer.url.path == "/console"
        assert email in answer.text
