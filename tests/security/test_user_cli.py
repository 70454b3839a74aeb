"""`accord user ...`: create (password from standard input), list, disable, enable, set-password, set-role,
link-oidc."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.db.base import utcnow
from accord.runtime import Runtime
from accord.security import users

PASSWORD = "a long enough password"


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    values = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        values["ACCORD_DATABASE_URL"] = settings.database_url
    return values


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def _login(settings: Settings, email: str, password: str) -> bool:
    rt = Runtime.create(settings)
    try:
        with rt.db.unit_of_work() as session:
            return users.authenticate(session, email=email, password=password, now=utcnow()) is not None
    finally:
        rt.close()


def test_user_create_reads_the_password_from_stdin(env: dict[str, str], settings: Settings) -> None:
    code, output = run(env, "user", "create", "Ann@Staff.Example", "--role", "agent", "--json", stdin=PASSWORD + "\n")
    assert code == 0, output
    created = json.loads(output)
    assert created["email"] == "ann@staff.example"
    assert created["role"] == "agent"
    assert PASSWORD not in output
    assert _login(settings, "ann@staff.example", PASSWORD)
    listed = json.loads(run(env, "user", "list", "--json")[1])
    assert [(u["email"], u["role"], u["disabled"]) for u in listed] == [("ann@staff.example", "agent", False)]
    assert "hash" not in json.dumps(listed)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("bad-email", "--role", "agent"), PASSWORD, "not valid"),
        (("a@b.example", "--role", "root"), PASSWORD, "role must be one of"),
        (("a@b.example", "--role", "agent"), "short", "at least 12"),
        (("a@b.example", "--role", "agent"), "", "at least 12"),
        (("a@b.example", "--role", "agent"), "x" * 5000, "at most 1024"),
        (("a@b.example", "--role", "agent"), PASSWORD + "\x00", "NUL"),
    ],
)
def test_user_create_refuses_bad_input(env: dict[str, str], args: tuple[str, ...], stdin: str, message: str) -> None:
    code, output = run(env, "user", "create", *args, stdin=stdin + "\n")
    assert code == 1
    assert message in output


def test_a_second_user_with_the_same_email_is_refused(env: dict[str, str]) -> None:
    assert run(env, "user", "create", "a@b.example", "--role", "admin", stdin=PASSWORD)[0] == 0
    code, output = run(env, "user", "create", "A@B.EXAMPLE", "--role", "agent", stdin=PASSWORD)
    assert code == 1
    assert "exists already" in output


def test_disable_enable_set_password_and_role(env: dict[str, str], settings: Settings) -> None:
    assert run(env, "user", "create", "a@b.example", "--role", "agent", stdin=PASSWORD)[0] == 0
    assert run(env, "user", "disable", "a@b.example")[0] == 0
    assert not _login(settings, "a@b.example", PASSWORD)
    assert run(env, "user", "enable", "a@b.example")[0] == 0
    assert _login(settings, "a@b.example", PASSWORD)
    assert run(env, "user", "set-password", "a@b.example", stdin="another long password\n")[0] == 0
    assert not _login(settings, "a@b.example", PASSWORD)
    assert _login(settings, "a@b.example", "another long password")
    assert run(env, "user", "set-role", "a@b.example", "--role", "auditor")[0] == 0
    assert json.loads(run(env, "user", "list", "--json")[1])[0]["role"] == "auditor"
    for args in (("disable", "x@b.example"), ("set-role", "a@b.example", "--role", "god")):
        code, output = run(env, "user", *args)
        assert code == 1, output


def test_link_oidc_makes_a_user_the_account_of_a_provider_identity(env: dict[str, str], settings: Settings) -> None:
    assert run(env, "user", "create", "a@b.example", "--role", "agent", stdin=PASSWORD)[0] == 0
    assert run(env, "user", "create", "c@b.example", "--role", "agent", stdin=PASSWORD)[0] == 0
    issuer = "https://idp.example"
    code, output = run(env, "user", "link-oidc", "a@b.example", "--subject", "sub-1", "--issuer", issuer)
    assert code == 0, output
    listed = {u["email"]: u["single_sign_on"] for u in json.loads(run(env, "user", "list", "--json")[1])}
    assert listed == {"a@b.example": True, "c@b.example": False}
    rt = Runtime.create(settings)
    try:
        with rt.db.unit_of_work() as session:
            user = users.oidc_user(session, issuer=issuer, subject="sub-1", email=None, role="analyst", now=utcnow())
            assert (user.email, user.role) == ("a@b.example", "analyst")
    finally:
        rt.close()
    for args, message in [
        (("c@b.example", "--subject", "sub-1", "--issuer", issuer), "another user is linked"),
        (("x@b.example", "--subject", "sub-2", "--issuer", issuer), "no user with this email"),
        (("c@b.example", "--subject", "s" * 300, "--issuer", issuer), "at most 255"),
        (("c@b.example", "--subject", "sub-3"), "give --issuer"),
    ]:
        code, output = run(env, "user", "link-oidc", *args)
        assert code == 1, output
        assert message in output
