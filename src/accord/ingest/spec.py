"""The Segment tracking spec: validating and normalising incoming calls. Pure functions, no I/O.

A call that breaks the spec raises `SpecError`, which names the field and becomes a 4xx answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")
MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_LENGTH = 200
MAX_EVENT_NAME_LENGTH = 200
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")


class SpecError(Exception):
    """A call Accord refuses; `code` is stable for clients, `message` says what to fix."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise SpecError("invalid_field", f"{field} must be an ISO-8601 timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise SpecError("invalid_field", f"{field} is not an ISO-8601 timestamp: {value[:40]!r}") from None
    except OverflowError:
        raise SpecError("invalid_field", f"{field} is out of range in UTC: {value[:40]!r}") from None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _identifier(event: dict[str, Any], key: str, where: str) -> str | None:
    value = event.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SpecError("invalid_field", f"{where}.{key} must be a string")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise SpecError("invalid_field", f"{where}.{key} is longer than {MAX_ID_LENGTH} characters")
    if text.strip() == "":
        return None
    event[key] = text
    return text


def _normalise_event(  # the checked event and its JSON encoding
    raw: Any,
    *,
    call_type: str | None,
    where: str,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    client_ip: str | None = None,
    gpc: bool = False,
) -> tuple[dict[str, Any], bytes]:
    """Check one call against the spec and return it normalised for the log.

    `call_type` is the endpoint's type (None for batch items, which carry their own).
    """
    if not isinstance(raw, dict):
        raise SpecError("invalid_event", f"{where} must be a JSON object")
    event: dict[str, Any] = dict(raw)
    event.pop("writeKey", None)
    event.pop("_accord", None)  # reserved for Accord's importer (the import run); no client may claim it
    kind = call_type or event.get("type")
    if kind not in CALL_TYPES:
        raise SpecError("invalid_type", f"{where}.type must be one of {', '.join(CALL_TYPES)}, not {str(kind)[:40]!r}")
    event["type"] = kind
    for field in OBJECT_FIELDS:
        value = event.get(field)
        if value is not None and not isinstance(value, dict):
            raise SpecError("invalid_field", f"{where}.{field} must be a JSON object")

    user_id = _identifier(event, "userId", where)
    anonymous_id = _identifier(event, "anonymousId", where)
    if kind == "alias":
        if _identifier(event, "previousId", where) is None:
            raise SpecError("missing_field", f"{where}.previousId is required for alias")
        if user_id is None:
            raise SpecError("missing_field", f"{where}.userId is required for alias")
    elif user_id is None and anonymous_id is None:
        raise SpecError("missing_field", f"{where} needs a userId or an anonymousId")
    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            raise SpecError("missing_field", f"{where}.event is required for track and must be a string")
        if len(name) > MAX_EVENT_NAME_LENGTH:
            raise SpecError("invalid_field", f"{where}.event is longer than {MAX_EVENT_NAME_LENGTH} characters")
    if kind == "group" and _identifier(event, "groupId", where) is None:
        raise SpecError("missing_field", f"{where}.groupId is required for group")
    for field in ("name", "category"):
        if field in event and event[field] is not None and not isinstance(event[field], str):
            raise SpecError("invalid_field", f"{where}.{field} must be a string")

    message_id = event.get("messageId")
    if message_id is None or message_id == "":
        event["messageId"] = str(uuid.uuid4())
    elif not isinstance(message_id, str) or len(message_id) > MAX_ID_LENGTH:
        raise SpecError("invalid_field", f"{where}.messageId must be a string of at most {MAX_ID_LENGTH} characters")

    if batch_context:
        event["context"] = {**batch_context, **(event.get("context") or {})}
    if batch_integrations:
        event["integrations"] = {**batch_integrations, **(event.get("integrations") or {})}
    context = event.get("context")
    if context is None:
        context = event["context"] = {}
    if client_ip and not context.get("ip"):
        context["ip"] = client_ip
    if gpc:
        # The request carried Sec-GPC: 1; the pipeline records it as an opt-out of sale and sharing.
        context["gpc"] = True

    # Clock skew: the device's clock may be off, but the gap between its timestamp and its sentAt is not.
    original = event.get("originalTimestamp", event.get("timestamp"))
    original_at = parse_time(original, f"{where}.timestamp") if original is not None else None
    sent = event.get("sentAt")
    sent_at = parse_time(sent, f"{where}.sentAt") if sent is not None else batch_sent_at
    try:
        if original_at is None:
            timestamp = received_at
        elif sent_at is None:
            timestamp = original_at
        else:
            timestamp = received_at - (sent_at - original_at)
    except OverflowError:
        raise SpecError("invalid_field", f"{where}.timestamp and sentAt are too far apart to correct") from None
    if original_at is not None:
        event["originalTimestamp"] = iso(original_at)
    if sent_at is not None:
        event["sentAt"] = iso(sent_at)
    event["receivedAt"] = iso(received_at)
    event["timestamp"] = iso(timestamp)

    try:
        encoded = orjson.dumps(event)
    except orjson.JSONEncodeError:  # orjson's own bound on nesting depth, about 250 levels
        raise SpecError("too_deep", f"{where} is nested too deeply; keep objects under 250 levels") from None
    size = len(encoded)
    if size > MAX_EVENT_BYTES:
        raise SpecError("event_too_large", f"{where} is {size} bytes; an event may be at most {MAX_EVENT_BYTES}", 413)
    return event, encoded


def normalise_event(
    raw: Any,
    *,
    call_type: str | None,
    where: str,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    client_ip: str | None = None,
) -> dict[str, Any]:
    """Check one call against the spec and return it normalised for the log.

    `call_type` is the endpoint's type (None for batch items, which carry their own).
    """
    return _normalise_event(
        raw,
        call_type=call_type,
        where=where,
        received_at=received_at,
        batch_sent_at=batch_sent_at,
        batch_context=batch_context,
        batch_integrations=batch_integrations,
        client_ip=client_ip,
    )[0]


def encode_events(events: list[dict[str, Any]]) -> bytes:
    """The log payload: a JSON array of the events, each encoded alone so no event gets deeper."""
    return _json_array(orjson.dumps(event) for event in events)


def contains_nul(value: Any) -> bool:
    """Whether any key or string inside `value` holds a NUL character (iterative: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def normalise_request(
    body: Any, *, endpoint: str, received_at: datetime, client_ip: str | None
) -> list[dict[str, Any]]:
    """Turn the parsed body of `/v1/{endpoint}` into a list of normalised events."""
    return normalise_and_encode(body, endpoint=endpoint, received_at=received_at, client_ip=client_ip)[0]


def normalise_and_encode(
    body: Any, *, endpoint: str, received_at: datetime, client_ip: str | None, gpc: bool = False
) -> tuple[list[dict[str, Any]], bytes]:
    """The normalised events and their log payload, each event encoded once (for its size check too)."""
    if not isinstance(body, dict):
        raise SpecError("invalid_body", "the request body must be a JSON object")
    if endpoint not in ("batch", "import"):
        pairs = [
            _normalise_event(
                body, call_type=endpoint, where=endpoint, received_at=received_at, client_ip=client_ip, gpc=gpc
            )
        ]
        return [pairs[0][0]], _payload(pairs)
    items = body.get("batch")
    if not isinstance(items, list):
        raise SpecError("missing_field", "batch must be a JSON array of events")
    if not items:
        raise SpecError("invalid_field", "batch is empty")
    if len(items) > MAX_BATCH_EVENTS:
        raise SpecError(
            "batch_too_large", f"batch has {len(items)} events; at most {MAX_BATCH_EVENTS} are allowed", 413
        )
    sent = body.get("sentAt")
    sent_at = parse_time(sent, "sentAt") if sent is not None else None
    context = body.get("context")
    integrations = body.get("integrations")
    for field, value in (("context", context), ("integrations", integrations)):
        if value is not None and not isinstance(value, dict):
            raise SpecError("invalid_field", f"{field} must be a JSON object")
    pairs = [
        _normalise_event(
            item,
            call_type=None,
            where=f"batch[{index}]",
            received_at=received_at,
            batch_sent_at=sent_at,
            batch_context=context,
            batch_integrations=integrations,
            client_ip=client_ip,
            gpc=gpc,
        )
        for index, item in enumerate(items)
    ]
    return [event for event, _ in pairs], _payload(pairs)


def _payload(pairs: list[tuple[dict[str, Any], bytes]]) -> bytes:
    return _json_array(encoded for _, encoded in pairs)


def _json_array(encoded: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(encoded) + b"]"
