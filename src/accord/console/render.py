"""Rendering console pages: one Jinja2 environment, one strict content security policy, and the error page."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).parent
STATIC = HERE / "static"
HTMX = "htmx-2.0.11.min.js"
HTMX_SSE = "htmx-ext-sse-2.2.4.min.js"
# Scripts and styles from our own static files only: no inline script, no eval, nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

# With `no-referrer` (the API's default) Chromium sends `Origin: null` on a form post, and the CSRF check
# could not tell our own forms from another site's; `same-origin` sends the origin to ourselves only.
PAGE_HEADERS = {"content-security-policy": CSP, "referrer-policy": "same-origin"}


def _when(value: datetime | str | None) -> str:
    """A time as people read it, to the second, in UTC."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def _duration(seconds: float | None) -> str:
    """A span as people read it: the two largest units (3 d 4 h, 12 min 5 s)."""
    if seconds is None:
        return ""
    left = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts[:2])


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["duration"] = _duration
templates.globals.update(htmx=HTMX, htmx_sse=HTMX_SSE)


def page(template: str, /, *, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def fragment(template: str, /, **context: Any) -> str:
    return templates.get_template(template).render(**context)


class ConsoleError(Exception):
    """An answer for a person: an HTML page with a status, a title and what to do."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class LoginRequired(Exception):
    """No live console session: the browser is sent to the login page."""
