"""Single sign-on with an OpenID Connect provider: the authorization code flow with PKCE, `state` and `nonce`.

Everything Accord learns about the provider comes from the configured issuer's discovery document
(`ISSUER/.well-known/openid-configuration`): the authorization and token endpoints and the JWKS that signs
ID tokens. Nothing else is fetched. Every answer from the provider is size-limited and must be well
formed; the ID token's signature is checked against the provider's keys (asymmetric algorithms only), and
its issuer, audience, expiry and nonce against this sign-in.

The protocol pieces come from Authlib (metadata validation, the authorization URL, PKCE's S256 challenge,
client authentication at the token endpoint, ID token claim rules such as `azp` and `at_hash`) and joserfc
(JWS signatures); the HTTP is httpx, with Accord's own timeouts and limits.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.security import is_secure_transport
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from accord.config import Settings
from accord.security.service import ROLES

MAX_DOCUMENT = 512 * 1024  # discovery, JWKS and token answers; real ones are a few KiB
DISCOVERY_TTL = 3600.0  # seconds a discovery document and a JWKS are kept
JWKS_REFETCH_AFTER = 10.0  # an unknown key id refetches the JWKS (key rotation), at most this often
LEEWAY = 60  # seconds of clock difference allowed on exp, iat and nbf
# Asymmetric signatures only: a provider's key is public, and "none" or a shared-secret MAC is refused.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
CALLBACK_PATH = "/console/login/oidc/callback"
LOGIN_PATH = "/console/login"  # where the provider sends the browser back after logging out
MAX_HINT = 8192  # an ID token longer than this is not kept for the logout (real ones are 1-2 KiB)
_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,200}@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")


class OidcError(Exception):
    """A sign-in that cannot go on: an HTTP status, a code for the audit trail and a message for the person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None = field(repr=False)  # never in a log line or a traceback's locals
    redirect_url: str | None  # None: ACCORD_PUBLIC_URL or the request's own URL, plus CALLBACK_PATH
    scopes: str
    role_claim: str
    role_map: tuple[tuple[str, str], ...]  # claim value -> role, in the order they were written
    name: str
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """The configuration, or None when single sign-on is off; a ValueError names a wrong setting."""
        if not settings.oidc_issuer:
            return None
        issuer = settings.oidc_issuer
        if not is_secure_transport(issuer) or "?" in issuer or "#" in issuer:
            raise ValueError(
                "ACCORD_OIDC_ISSUER must be an https URL without query or fragment (http only for localhost)"
            )
        if not settings.oidc_client_id:
            raise ValueError("ACCORD_OIDC_CLIENT_ID is needed with ACCORD_OIDC_ISSUER")
        if "openid" not in settings.oidc_scopes.split():
            raise ValueError("ACCORD_OIDC_SCOPES must include openid")
        if not settings.oidc_role_map:
            raise ValueError("ACCORD_OIDC_ROLE_MAP maps no claim value to a role: every sign-in would be refused")
        for value, role in settings.oidc_role_map.items():
            if role not in ROLES:
                raise ValueError(f"ACCORD_OIDC_ROLE_MAP maps {value!r} to {role!r}; roles are {', '.join(ROLES)}")
        if settings.oidc_redirect_url is not None and not is_secure_transport(settings.oidc_redirect_url):
            raise ValueError("ACCORD_OIDC_REDIRECT_URL must be an https URL (http only for localhost)")
        secret: str | None = None
        if settings.oidc_client_secret_file is not None:
            if settings.oidc_client_secret is not None:
                raise ValueError("set ACCORD_OIDC_CLIENT_SECRET or ACCORD_OIDC_CLIENT_SECRET_FILE, not both")
            try:
                secret = settings.oidc_client_secret_file.read_text().strip()
            except OSError as error:
                raise ValueError(f"ACCORD_OIDC_CLIENT_SECRET_FILE cannot be read: {error.strerror}") from None
        elif settings.oidc_client_secret is not None:
            secret = settings.oidc_client_secret.get_secret_value()
        return cls(
            issuer=issuer,
            client_id=settings.oidc_client_id,
            client_secret=secret or None,
            redirect_url=settings.oidc_redirect_url,
            scopes=settings.oidc_scopes,
            role_claim=settings.oidc_role_claim,
            role_map=tuple(settings.oidc_role_map.items()),
            name=settings.oidc_name,
            timeout=settings.oidc_timeout_seconds,
        )


@dataclass(frozen=True, slots=True)
class Authorization:
    """Where to send the browser, and what the callback must find again."""

    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the provider says signed in, checked."""

    issuer: str
    subject: str
    email: str | None
    role: str | None  # None: the role claim holds no value the role map knows
    # The ID token itself, kept with the session for logging out at the provider; None when longer than
    # MAX_HINT (a header or a query string would not carry it)
    id_token: str | None = field(default=None, repr=False)


def role_for(config: OidcConfig, claims: Mapping[str, Any]) -> str | None:
    """The role of the first role-map entry whose value the role claim holds (a string or a list of
    strings; a dotted name such as `realm_access.roles` reaches into nested objects)."""
    found: Any = claims
    for part in config.role_claim.split("."):
        found = found.get(part) if isinstance(found, Mapping) else None
    values = (
        {found}
        if isinstance(found, str)
        else {v for v in found if isinstance(v, str)}
        if isinstance(found, list)
        else set()
    )
    return next((role for value, role in config.role_map if value in values), None)


class OidcProvider:
    """The configured provider: its discovery document and keys (cached for an hour in this process), the
    URL a sign-in starts at, and the exchange of the code the browser brings back for a checked identity."""

    def __init__(self, config: OidcConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock  # for the caches' ages only; token times are checked against the wall clock
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: tuple[float, KeySet] | None = None

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.config.timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "Accord"},
        )

    async def _fetch(self, what: str, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        """An answer's status and JSON, read at most MAX_DOCUMENT bytes far."""
        try:
            async with self._client() as client, client.stream(method, url, **kwargs) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_DOCUMENT:
                    raise _too_large(what)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise _too_large(what)
                status = response.status_code
        except httpx.HTTPError as error:
            raise OidcError(
                502,
                "oidc_unreachable",
                f"The sign-in provider cannot be reached ({type(error).__name__} on its {what}). "
                "Try again later, or log in with a password.",
            ) from None
        try:
            return status, json.loads(body)
        except ValueError:
            if status != 200:
                return status, None
            raise OidcError(
                502, "oidc_provider_invalid", f"The sign-in provider's {what} is not JSON. {_ASK_ADMIN}"
            ) from None

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, checked: well formed, for the configured issuer, with the
        code flow and a signature algorithm Accord accepts."""
        now = self._clock()
        if self._metadata is not None and now - self._metadata[0] < DISCOVERY_TTL:
            return self._metadata[1]
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        status, data = await self._fetch("discovery document", "GET", url)
        if status != 200:
            raise OidcError(
                502, "oidc_unreachable", f"The sign-in provider's discovery document answered {status}. {_ASK_ADMIN}"
            )
        problem = _metadata_problem(data, self.config.issuer)
        if problem:
            raise OidcError(
                502, "oidc_provider_invalid", f"The sign-in provider's discovery document {problem}. {_ASK_ADMIN}"
            )
        self._metadata = (now, data)
        return dict(data)

    async def _keyset(self, *, refresh: bool = False) -> KeySet:
        now = self._clock()
        if self._keys is not None and now - self._keys[0] < (JWKS_REFETCH_AFTER if refresh else DISCOVERY_TTL):
            return self._keys[1]
        metadata = await self.metadata()
        status, data = await self._fetch("key set", "GET", metadata["jwks_uri"])
        if status != 200:
            raise OidcError(502, "oidc_unreachable", f"The sign-in provider's key set answered {status}. {_ASK_ADMIN}")
        try:
            keys = KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            raise OidcError(
                502, "oidc_provider_invalid", f"The sign-in provider's key set is malformed. {_ASK_ADMIN}"
            ) from None
        self._keys = (now, keys)
        return keys

    async def authorization(self, *, redirect_url: str) -> Authorization:
        """A new sign-in: fresh state, nonce and PKCE verifier, and the provider's URL that asks for them."""
        metadata = await self.metadata()
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        url = prepare_grant_uri(
            metadata["authorization_endpoint"],
            self.config.client_id,
            "code",
            redirect_uri=redirect_url,
            scope=self.config.scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return Authorization(url=str(url), state=state, nonce=nonce, code_verifier=verifier)

    async def finish(self, *, code: str, redirect_url: str, nonce: str, code_verifier: str) -> Identity:
        """Exchange the code (with the PKCE verifier) for an ID token and check it; who signed in."""
        metadata = await self.metadata()
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_url, code_verifier=code_verifier
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        auth = ClientAuth(self.config.client_id, self.config.client_secret, _auth_method(self.config, metadata))
        url, headers, body = auth.prepare("POST", metadata["token_endpoint"], headers, body)
        status, answer = await self._fetch("token endpoint", "POST", url, headers=headers, content=body.encode())
        if status != 200 or not isinstance(answer, dict) or "error" in answer:
            error = answer.get("error") if isinstance(answer, dict) else None
            reason = str(error)[:60] if isinstance(error, str) else f"HTTP {status}"
            raise OidcError(
                401,
                "oidc_code_refused",
                f"The sign-in provider refused to finish this sign-in ({reason}). Start again.",
            )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or len(id_token) > MAX_DOCUMENT:
            raise OidcError(502, "oidc_provider_invalid", "The sign-in provider sent no ID token. " + _ASK_ADMIN)
        access_token = answer.get("access_token")
        claims = await self._verify(
            id_token, metadata, nonce=nonce, access_token=access_token if isinstance(access_token, str) else None
        )
        email = claims.get("email")
        return Identity(
            issuer=metadata["issuer"],
            subject=claims["sub"],
            email=email.strip().lower() if isinstance(email, str) and _EMAIL.match(email.strip()) else None,
            role=role_for(self.config, claims),
            id_token=id_token if len(id_token) <= MAX_HINT else None,
        )

    async def logout_url(self, *, id_token: str | None, post_logout_redirect: str) -> str | None:
        """Where to send the browser so that the provider ends its session too (OpenID Connect RP-Initiated
        Logout): its end-session endpoint with the ID token as a hint, this client's id and where to come
        back to. None when the provider names no such endpoint, or cannot be reached now."""
        try:
            metadata = await self.metadata()
        except OidcError:
            return None
        endpoint = metadata.get("end_session_endpoint")
        if not endpoint:
            return None
        query = [("client_id", self.config.client_id), ("post_logout_redirect_uri", post_logout_redirect)]
        if id_token:
            query.append(("id_token_hint", id_token))
        return str(add_params_to_uri(endpoint, query))

    async def _verify(
        self, id_token: str, metadata: Mapping[str, Any], *, nonce: str, access_token: str | None
    ) -> dict[str, Any]:
        algorithms = [a for a in SIGNING_ALGORITHMS if a in metadata["id_token_signing_alg_values_supported"]]
        try:
            try:
                token = jwt.decode(id_token, await self._keyset(), algorithms=algorithms)
            except InvalidKeyIdError:  # the provider may have rotated its keys since we fetched them
                token = jwt.decode(id_token, await self._keyset(refresh=True), algorithms=algorithms)
        except BadSignatureError:
            raise _invalid("its signature does not match the provider's keys") from None
        except InvalidKeyIdError:
            raise _invalid("it is signed with a key the provider does not publish") from None
        except (JoseError, ValueError, TypeError, KeyError):
            raise _invalid(f"it is not a signed JWT with one of {', '.join(algorithms)}") from None
        claims = CodeIDToken(
            token.claims,
            token.header,
            {
                "iss": {"essential": True, "value": metadata["issuer"]},
                "aud": {"essential": True, "value": self.config.client_id},
            },
            {"nonce": nonce, "client_id": self.config.client_id, "access_token": access_token},
        )
        try:
            claims.validate(now=int(time.time()), leeway=LEEWAY)
        except ExpiredTokenError:
            raise _invalid("it has expired") from None
        except InvalidClaimError as error:
            raise _invalid(_CLAIM_PROBLEMS.get(error.claim, f"its {error.claim} claim is wrong")) from None
        except MissingClaimError as error:
            raise _invalid(f"it has no {error.claim} claim") from None
        except ClaimError as error:
            raise _invalid(f"its claims are not valid ({error.error})") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 255:
            raise _invalid("its sub claim is not an identifier of at most 255 characters")
        return dict(claims)


_ASK_ADMIN = "An administrator should check the provider and ACCORD_OIDC_ISSUER; a password login still works."
_CLAIM_PROBLEMS = {
    "iss": "it was issued by another provider (iss)",
    "aud": "it was issued for another client (aud)",
    "nonce": "it does not belong to this sign-in (nonce): it may be replayed",
    "azp": "it was issued for another client (azp)",
    "at_hash": "it does not match its access token (at_hash)",
    "iat": "it was issued in the future (iat)",
    "nbf": "it is not valid yet (nbf)",
}


def _invalid(why: str) -> OidcError:
    return OidcError(401, "oidc_token_invalid", f"The sign-in provider's ID token was refused: {why}. Start again.")


def _too_large(what: str) -> OidcError:
    return OidcError(
        502,
        "oidc_provider_invalid",
        f"The sign-in provider's {what} is larger than {MAX_DOCUMENT // 1024} KiB. {_ASK_ADMIN}",
    )


def _metadata_problem(data: Any, issuer: str) -> str | None:
    if not isinstance(data, dict):
        return "is not a JSON object"
    try:
        OpenIDProviderMetadata(data).validate()
    except Exception as error:  # Authlib raises ValueError, and TypeError etc. on values of the wrong type
        return f"is not valid ({str(error)[:120] or type(error).__name__})"
    if data["issuer"] != issuer:
        return f"names the issuer {str(data['issuer'])[:120]!r}, not the configured {issuer!r}"
    if "code" not in data["response_types_supported"]:
        return "does not offer the authorization code flow"
    if not data.get("authorization_endpoint") or not data.get("jwks_uri"):
        return "lacks the authorization endpoint or the key set"
    ending = data.get("end_session_endpoint")
    if ending is not None and not _web_url(ending):
        return "names an end-session endpoint that is not an https URL (http only for localhost)"
    offered = data["id_token_signing_alg_values_supported"]
    if not isinstance(offered, list) or not set(offered) & set(SIGNING_ALGORITHMS):
        return f"offers no ID token signature Accord accepts ({', '.join(SIGNING_ALGORITHMS)})"
    return None


def _web_url(value: Any) -> bool:
    """An absolute https URL (http only for localhost) without a fragment, spaces or control characters, of
    a sane length."""
    if not isinstance(value, str) or len(value) > 2000 or any(c.isspace() or ord(c) < 32 for c in value):
        return False
    parts = urlsplit(value)
    return bool(parts.netloc) and not parts.fragment and is_secure_transport(value)


def _auth_method(config: OidcConfig, metadata: Mapping[str, Any]) -> str:
    """client_secret_basic (the standard default) unless the provider offers only client_secret_post; a
    client without a secret is a public client, protected by PKCE."""
    if config.client_secret is None:
        return "none"
    offered = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if "client_secret_basic" not in offered and "client_secret_post" in offered:
        return "client_secret_post"
    return "client_secret_basic"
