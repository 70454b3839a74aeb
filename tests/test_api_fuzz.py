"""Property-based fuzzing of the HTTP API with schemathesis, against the OpenAPI schema the app serves.

Every generated request, valid for the schema (positive) or not (negative), must get an answer below 500,
and every error answer must be JSON `{"code": ..., "message": ...}`. The REST routes answer 401 to a
missing or bad bearer token, the tracking routes to a bad write key. Hypothesis is derandomized and
bounded, so every run sends the same requests.

The regression tests at the end are bugs the fuzzing (or reading the code it pointed at) found, each
reduced to one request.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import LiveAccord

FUZZ = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
# The credential checks answer before a route reads anything, so a few cases per route show it; the
# generated credentials and the fixed ones above are what vary.
CREDENTIAL_FUZZ = settings(FUZZ, max_examples=12)
ANN = "fuzz-ann"
# What these tests judge is the answer, not how soon it comes: on a loaded two-core CI machine a request
# has waited more than schemathesis's default of 10 s once (and answered at once when Hypothesis tried it
# again), so a request may take up to REQUEST_TIMEOUT_S. One still waiting after STACKS_AFTER_S has every
# thread's stack written to stderr, which a failure shows: where the server was waiting, if it hangs.
REQUEST_TIMEOUT_S = 60.0
STACKS_AFTER_S = 20.0


def served_schema(live: LiveAccord, *, generate_credentials: bool) -> schemathesis.BaseSchema:
    """The schema as GET /openapi.json serves it, with no schemathesis.toml or environment in play.

    With `generate_credentials`, cases carry made-up Authorization headers (or, when negative, none)
    from the security schemes; without, the test sends its own.
    """
    with live.api() as api:
        answer = api.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": generate_credentials}})
    return schemathesis.openapi.from_dict(answer.json(), config=config)


def operations(schema: schemathesis.BaseSchema, security_scheme: str) -> list[APIOperation]:
    """The operations that the served schema puts behind `security_scheme`."""
    found = []
    for path, methods in schema.raw_schema["paths"].items():
        for method, definition in methods.items():
            if any(security_scheme in requirement for requirement in definition.get("security", [])):
                found.append(schema[path][method])
    assert found, f"the schema puts no operation behind {security_scheme}"
    return found


def cases(operation: APIOperation, path_parameters: dict[str, str] | None = None) -> st.SearchStrategy[Case]:
    """Positive and negative cases; negative ones only where some input is left to get wrong."""
    definition = operation.definition.raw
    free = [p for p in definition.get("parameters", []) if not (path_parameters and p["in"] == "path")]
    modes = [GenerationMode.POSITIVE]
    if free or "requestBody" in definition:
        modes.append(GenerationMode.NEGATIVE)
    return st.one_of(*(operation.as_strategy(generation_mode=mode, path_parameters=path_parameters) for mode in modes))


def fuzz(send: Callable[..., None], *, budget: settings = FUZZ, **strategies: st.SearchStrategy[Any]) -> None:
    @budget
    @given(**strategies)
    def run(**drawn: Any) -> None:
        send(**drawn)

    run()


@contextmanager
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


class Authorization(requests.auth.AuthBase):
    """Sends exactly this Authorization header, or none, whatever the generated case carries.

    Schemathesis drops the header from a negative case that left the credential out, even when the
    caller passes one in `headers`; requests applies `auth` last, so this is what goes on the wire.
    """

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        if self.value is not None:
            request.headers["Authorization"] = self.value
        return request

    def __repr__(self) -> str:
        return f"Authorization({self.value!r})"


def call(live: LiveAccord, case: Case, session: requests.Session, auth: Authorization | None) -> Response:
    watch = threading.Timer(STACKS_AFTER_S, print_stacks)
    watch.daemon = True
    watch.start()
    try:
        return case.call(base_url=live.base_url, session=session, auth=auth, timeout=REQUEST_TIMEOUT_S)
    finally:
        watch.cancel()


def print_stacks() -> None:
    """Every thread's stack to stderr (not faulthandler's: it reads running threads without the GIL, and
    crashed the process when tried here)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}", file=sys.stderr)


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def header(response: Response, name: str) -> str | None:
    values = [value for key, found in response.headers.items() if key.lower() == name for value in found]
    return values[0] if values else None


def describe(case: Case, response: Response) -> str:
    sent = response.request.headers.get("Authorization")
    return (
        f"{case.operation.label} with Authorization {sent!r} answered {response.status_code} "
        f"{response.text[:300]!r}\n{case.as_curl_command()}"
    )


def settle(live: LiveAccord, status: int) -> None:
    """After a 5xx, let the server thread finish logging it before pytest formats a failure."""
    if status >= 500:
        with live.client() as client:
            client.get("/healthz")


def assert_error_body(case: Case, response: Response) -> None:
    if response.status_code < 400:
        return
    what = describe(case, response)
    assert (header(response, "content-type") or "").startswith("application/json"), what
    body = response.json()
    assert isinstance(body, dict), what
    assert set(body) == {"code", "message"}, what
    assert isinstance(body["code"], str), what
    assert body["code"], what
    assert isinstance(body["message"], str), what


def seed_profile(live: LiveAccord) -> str:
    """A profile with events of every kind, so that the REST routes have something to answer with."""
    events: list[dict[str, Any]] = [
        {"type": "identify", "userId": ANN, "traits": {"email": "ann@example.com"}, "messageId": "f-1"},
        {"type": "track", "userId": ANN, "event": "Bought", "properties": {"n": 1}, "messageId": "f-2"},
        {"type": "page", "userId": ANN, "name": "Home", "messageId": "f-3"},
        {"type": "screen", "userId": ANN, "name": "Cart", "messageId": "f-4"},
        {"type": "group", "userId": ANN, "groupId": "acme", "messageId": "f-5"},
        {"type": "alias", "userId": ANN, "previousId": "old-ann", "messageId": "f-6"},
    ]
    with live.client(auth=(live.write_key, "")) as client:
        answer = client.post("/v1/batch", json={"batch": events})
    assert answer.status_code == 200, answer.text
    live.wait_processed()
    with live.api() as api:
        profile = api.get(f"/api/v1/profiles/user_id:{ANN}")
    assert profile.status_code == 200, profile.text
    return str(profile.json()["id"])


def test_rest_routes_never_fail_with_an_admin_token(live: LiveAccord) -> None:
    schema = served_schema(live, generate_credentials=False)
    profile_id = seed_profile(live)
    auth = Authorization(f"Bearer {live.token}")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    with http_session() as session:

        def send(case: Case) -> None:
            response = call(live, case, session, auth)
            settle(live, response.status_code)
            case.validate_response(response, checks=checks)
            assert_error_body(case, response)

        for operation in operations(schema, "HTTPBearer"):
            fuzz(send, case=cases(operation))
            if "{ref}" in operation.path and operation.method.upper() != "DELETE":
                # Generated references find no one; these find the seeded profile, so the rest is fuzzed.
                # (Not erasure: the routes after it would only see the erased person's 410.)
                for ref in (profile_id, f"user_id:{ANN}", "email:ANN@example.com"):
                    fuzz(send, case=cases(operation, {"ref": ref}))


def test_rest_routes_answer_401_without_a_valid_token(live: LiveAccord) -> None:
    schema = served_schema(live, generate_credentials=True)
    credentials = [
        None,  # as generated: a made-up token, a malformed header, or none
        Authorization(None),
        Authorization("Bearer"),
        Authorization("Bearer not-a-token"),
        Authorization(f"Bearer {live.token}x"),  # a real token id with the wrong secret
        Authorization(basic(live.write_key)),
    ]
    with http_session() as session:

        def send(case: Case, auth: Authorization | None) -> None:
            response = call(live, case, session, auth)
            settle(live, response.status_code)
            assert response.status_code == 401, describe(case, response)
            assert header(response, "www-authenticate") == "Bearer", describe(case, response)
            assert_error_body(case, response)

        for operation in operations(schema, "HTTPBearer"):
            fuzz(send, budget=CREDENTIAL_FUZZ, case=cases(operation), auth=st.sampled_from(credentials))


def test_tracking_routes_never_fail_with_the_write_key(live: LiveAccord) -> None:
    schema = served_schema(live, generate_credentials=False)
    auth = Authorization(basic(live.write_key))
    # Not negative_data_rejection: the spec accepts more than the schema says, as Segment does
    # (a numeric userId, for one), so schema-invalid bodies may rightly be accepted.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    with http_session() as session:

        def send(case: Case) -> None:
            response = call(live, case, session, auth)
            settle(live, response.status_code)
            case.validate_response(response, checks=checks)
            assert_error_body(case, response)

        for operation in operations(schema, "writeKey"):
            fuzz(send, case=cases(operation))
    # Whatever was accepted, the worker gets through it.
    live.wait_processed()


def test_tracking_routes_answer_401_to_a_bad_write_key(live: LiveAccord) -> None:
    schema = served_schema(live, generate_credentials=True)
    credentials = [
        None,  # as generated: random Basic credentials, a malformed header, or none
        Authorization(None),
        Authorization(basic("not-a-write-key")),
        Authorization(basic("")),
        Authorization("Basic !!"),
        Authorization(f"Bearer {live.token}"),
    ]
    with http_session() as session:

        def send(case: Case, auth: Authorization | None) -> None:
            response = call(live, case, session, auth)
            settle(live, response.status_code)
            assert_error_body(case, response)
            if response.request.headers.get("Authorization"):
                assert response.status_code == 401, describe(case, response)
                assert header(response, "www-authenticate") == 'Basic realm="accord"', describe(case, response)
            else:
                # The write key may then be in the body, so a body that cannot be read is refused as such.
                assert response.status_code in (400, 401), describe(case, response)
                if response.status_code == 400:
                    assert response.json()["code"] in ("invalid_json", "invalid_body"), describe(case, response)

        for operation in operations(schema, "writeKey"):
            fuzz(send, budget=CREDENTIAL_FUZZ, case=cases(operation), auth=st.sampled_from(credentials))


# Bugs found, one request each. Each asserts the right answer, so it passes, and fails as XPASS, once fixed.


def get_settled(live: LiveAccord, path: str) -> Any:
    with live.api() as api:
        answer = api.get(path)
    settle(live, answer.status_code)
    return answer


def assert_refused(answer: Any, statuses: tuple[int, ...] = (400, 422)) -> None:
    assert answer.status_code in statuses, f"{answer.status_code} {answer.text[:300]}"
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.text[:300]
    assert set(answer.json()) == {"code", "message"}, answer.text[:300]


@pytest.mark.parametrize("query", ["since=0001-01-01T00:00:00%2B01:00", "until=9999-12-31T23:59:59-01:00"])
def test_events_time_filter_out_of_range_in_utc_is_refused(live: LiveAccord, query: str) -> None:
    seed_profile(live)
    assert_refused(get_settled(live, f"/api/v1/profiles/user_id:{ANN}/events?{query}"))


def forged_cursor(moment: str, event_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([moment, event_id]).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        forged_cursor("2026-01-01T00:00:00", 1),
        forged_cursor("2026-01-01T00:00:00+00:00", 2**63),
        forged_cursor("9999-12-31T23:59:59-01:00", 1),
    ],
    ids=["naive-time", "id-past-int64", "time-out-of-range-in-utc"],
)
def test_events_forged_cursor_is_refused(live: LiveAccord, cursor: str) -> None:
    seed_profile(live)
    assert_refused(get_settled(live, f"/api/v1/profiles/user_id:{ANN}/events?cursor={cursor}"), (400,))


def test_profile_routes_document_their_error_statuses(live: LiveAccord) -> None:
    answer = get_settled(live, "/api/v1/profiles/nobody")
    assert answer.status_code == 404
    with live.api() as api:
        documented = api.get("/openapi.json").json()["paths"]["/api/v1/profiles/{ref}"]["get"]["responses"]
    assert "404" in documented, sorted(documented)


def test_profile_routes_document_their_validation_error_body(live: LiveAccord) -> None:
    answer = get_settled(live, "/api/v1/profiles/nobody/events?limit=0")
    assert answer.status_code == 422
    assert set(answer.json()) == {"code", "message"}
    with live.api() as api:
        schema = api.get("/openapi.json").json()
    documented = schema["paths"]["/api/v1/profiles/{ref}/events"]["get"]["responses"]["422"]
    ref = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {"code", "message"}


def test_events_time_filter_refuses_a_bare_number(live: LiveAccord) -> None:
    # The filters are validated before the profile is looked up: a refused value answers 422, not 404.
    assert_refused(get_settled(live, "/api/v1/profiles/nobody/events?until=17"))
