"""Finding customers and the customer 360."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from accord.console.auth import require_login
from accord.console.render import page
from accord.security.users import Login

router = APIRouter(include_in_schema=False)
Anyone = Annotated[Login, Depends(require_login("analyst", "agent", "auditor"))]


@router.get("/console")
async def home(login: Anyone) -> Response:
    return page("home.html", title="Accord console", login=login)
