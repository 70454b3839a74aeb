"""A fake OpenID Connect provider at the edge: a small real HTTP server serving discovery, JWKS, authorize and
token endpoints, signing ID tokens with a test key. Tests change what it answers to play a broken or
hostile provider."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from conftest import ServerThread, bound_socket

CLIENT_ID = "accord-console"
CLIENT_SECRET = "s3cret-for-tests"
# One key pair for the whole run: RSA generation is slow, and each test gets its own provider anyway.
KEY = RSAKey.generate_key(2048, parameters={"kid": "key-1", "alg": "RS256", "use": "sig"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "key-1", "alg": "RS256", "use": "sig"})
NEW_KEY = RSAKey.generate_key(2048, parameters={"kid": "key-2", "alg": "RS256", "use": "sig"})


@dataclass
class FakeProvider:
    issuer: str
    # Who signs in at the authorize endpoint, and what their ID token says.
    claims: dict[str, Any] = field(
        default_factory=lambda: {"sub": "alice-0001", "email": "alice@corp.example", "groups": ["accord-agents"]}
    )
    tamper: dict[str, Any] = field(default_factory=dict)  # ID token claims to set (None: remove)
    header: dict[str, Any] = field(default_factory=dict)  # JWS header fields to set
    signing_key: RSAKey = field(default_factory=lambda: KEY)
    discovery: bytes | None = None  # served instead of the real discovery document
    jwks: bytes | None = None  # served instead of the real key set
    published: list[RSAKey] = field(default_factory=lambda: [KEY])  # the keys in the key set
    key_set_requests: int = 0
    deny: str | None = None  # the authorize endpoint answers with this OAuth error
    id_token: str | None = None  # sent instead of a signed ID token
    auth_method: str = "client_secret_basic"  # how the token endpoint wants the client to authenticate
    interactive: bool = False  # the authorize endpoint shows a page whose button signs in (for a browser)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: int = 0
    end_session: bool = True  # the discovery document names an end-session endpoint (RP-Initiated Logout)
    issued: list[str] = field(default_factory=list)  # the ID tokens the token endpoint sent
    logouts: list[dict[str, str]] = field(default_factory=list)  # the queries the end-session endpoint got

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [self.auth_method],
        } | ({"end_session_endpoint": f"{self.issuer}/logout?tenant=corp"} if self.end_session else {})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/authorize", self._authorize, methods=["GET", "POST"]),
                Route("/token", self._token, methods=["POST"]),
                Route("/logout", self._logout),
            ]
        )

    async def _discovery(self, _: Request) -> Response:
        if self.discovery is not None:
            return Response(self.discovery, media_type="application/json")
        return JSONResponse(self.metadata())

    async def _jwks(self, _: Request) -> Response:
        self.key_set_requests += 1
        if self.jwks is not None:
            return Response(self.jwks, media_type="application/json")
        return JSONResponse({"keys": [key.as_dict(private=False) for key in self.published]})

    async def _authorize(self, request: Request) -> Response:
        if request.method == "POST":  # the interactive page's button
            q: Any = await request.form()
        elif self.interactive:
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in request.query_params.items()
            )
            return HTMLResponse(
                f'<!doctype html><title>Corp SSO</title><form method="post" action="/authorize">{fields}'
                "<p>Signed in at Corp SSO as alice@corp.example.</p><button>Sign in</button></form>"
            )
        else:
            q = request.query_params
        assert q["response_type"] == "code"
        assert q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256"
        assert "openid" in q["scope"].split()
        if self.deny:
            back = urlencode({"error": self.deny, "state": q["state"]})
            return RedirectResponse(f"{q['redirect_uri']}?{back}", status_code=302)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q["nonce"], "challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
        back = urlencode({"code": code, "state": q["state"]})
        return RedirectResponse(f"{q['redirect_uri']}?{back}", status_code=302)

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = await request.form()
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if self.auth_method == "client_secret_basic":
            authenticated = (
                scheme == "Basic" and base64.b64decode(credentials).decode() == f"{CLIENT_ID}:{CLIENT_SECRET}"
            )
        else:
            secret = CLIENT_SECRET if self.auth_method == "client_secret_post" else None
            authenticated = not scheme and form.get("client_id") == CLIENT_ID and form.get("client_secret") == secret
        if not authenticated:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = self.codes.pop(str(form.get("code")), None)  # a code works once
        if issued is None or form.get("redirect_uri") != issued["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = str(form.get("code_verifier"))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != issued["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": issued["nonce"]}
        claims.update(self.claims)
        for name, value in self.tamper.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        header = {"alg": "RS256", "kid": self.signing_key.kid, **self.header}
        id_token = self.id_token or jwt.encode(header, claims, self.signing_key, algorithms=[header["alg"]])
        self.issued.append(id_token)
        return JSONResponse(
            {"access_token": "at-" + secrets.token_urlsafe(8), "token_type": "Bearer", "id_token": id_token}
        )

    async def _logout(self, request: Request) -> Response:
        """The end-session endpoint: ends the person's session here and sends the browser back."""
        self.logouts.append(dict(request.query_params))
        return RedirectResponse(request.query_params["post_logout_redirect_uri"], status_code=302)


@contextmanager
def running_provider(host: str = "127.0.0.1") -> Iterator[FakeProvider]:
    """A provider on a free port; `host` "localhost" makes it another site than Accord on 127.0.0.1."""
    sock = bound_socket()
    provider = FakeProvider(issuer=f"http://{host}:{sock.getsockname()[1]}")
    with ServerThread(provider.app(), sock):
        yield provider


def sign_in(client: httpx.Client, *, next_path: str | None = None) -> tuple[httpx.Response, str]:
    """Click "Log in with ..." and let the provider sign the person in; Accord's answer to the callback and
    the callback URL (to replay it)."""
    begin = client.get("/console/login/oidc", params={"next": next_path} if next_path else None)
    assert begin.status_code == 303, begin.text
    at_provider = httpx.get(begin.headers["location"], timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    callback = at_provider.headers["location"]
    return client.get(callback), callback


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()
