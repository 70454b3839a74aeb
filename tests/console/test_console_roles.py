"""Every console page, for every role and for no login, answers as docs/security.md's console table says."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from accord import console
from accord.security.service import ROLES
from conftest import LiveAccord
from console.helpers import csrf_of, login, make_user

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
CREDENTIALS = ("none", *ROLES)
PUBLIC_POSTS = {("POST", "/console/login")}


def matrix() -> dict[tuple[str, str], dict[str, bool]]:
    rows: dict[tuple[str, str], dict[str, bool]] = {}
    for line in DOC.read_text().splitlines():
        found = re.match(r"\| `(/console\S*)` \| (GET|POST|PUT|DELETE) \|(.*)\|$", line)
        if found:
            cells = [cell.strip() for cell in found.group(3).split("|")]
            assert len(cells) == len(CREDENTIALS), line
            rows[(found.group(2), found.group(1))] = {
                c: cell == "yes" for c, cell in zip(CREDENTIALS, cells, strict=True)
            }
    return rows


def console_routes() -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for router in console.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods - {"HEAD"}
    }


def test_the_table_covers_every_console_route() -> None:
    assert all(path.startswith("/console") for _, path in console_routes())
    assert console_routes() == set(matrix())


# Requests that need more than the path to succeed, made for an allowed role: (url, form fields).
Maker = Callable[[LiveAccord], tuple[str, dict[str, str]]]
VALID_REQUESTS: dict[tuple[str, str], Maker] = {}


def _refused(answer: httpx.Response) -> str | None:
    if answer.status_code == 403:
        return "role"
    if answer.status_code == 303 and answer.headers["location"].startswith("/console/login?next="):
        return "login"
    return None


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_every_console_route_answers_each_credential_as_documented(live: LiveAccord, credential: str) -> None:
    with live.client() as client:
        token = ""
        if credential != "none":
            assert login(client, make_user(live.rt, credential)).status_code == 303
            token = csrf_of(client.get("/console").text)
        # Logging out ends the session the rest of the walk needs: last.
        for (method, path), allowed in sorted(matrix().items(), key=lambda item: item[0][1] == "/console/logout"):
            maker = VALID_REQUESTS.get((method, path))
            url, fields = maker(live) if maker else (path, {})
            if (method, path) in PUBLIC_POSTS:
                with live.client() as fresh:
                    answer = login(fresh, make_user(live.rt, "agent"))
            elif method == "GET":
                answer = client.get(url)
            else:
                answer = client.request(method, url, data={"csrf": token, **fields})
            refused = _refused(answer)
            if allowed[credential]:
                assert refused is None, (method, path, credential)
                assert answer.status_code < 400, (method, path, credential, answer.status_code)
            else:
                assert refused == ("login" if credential == "none" else "role"), (method, path, credential)
