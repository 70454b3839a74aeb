"""Consent arriving through the tracking API: a `Consent Updated` track event from a banner or a consent
management platform, and the Global Privacy Control signal (`Sec-GPC: 1`, or `context.gpc: true`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from accord.config import Settings
from accord.consent import service
from accord.consent.keys import SigningKey
from accord.consent.service import ConsentError, NoticeRef, Statement

CONSENT_EVENT = "Consent Updated"
MAX_STATEMENTS = 50


def _text(item: dict[str, Any], name: str, where: str, default: str | None = None) -> str | None:
    value = item.get(name, default)
    if value is None or isinstance(value, str):
        return value
    raise ConsentError(422, "invalid_consent_event", f"{where}.{name} must be a string")


def _time(item: dict[str, Any], name: str, where: str) -> datetime | None:
    text = _text(item, name, where)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConsentError(422, "invalid_consent_event", f"{where}.{name} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise ConsentError(422, "invalid_consent_event", f"{where}.{name} needs a time zone")
    return moment


def _notice(item: dict[str, Any], where: str) -> NoticeRef | None:
    notice = item.get("notice")
    if notice is None:
        return None
    if (
        not isinstance(notice, dict)
        or not isinstance(notice.get("key"), str)
        or not isinstance(notice.get("version"), int)
        or isinstance(notice.get("version"), bool)
    ):
        raise ConsentError(422, "invalid_consent_event", f"{where}.notice must be {{key, version, language}}")
    language = notice.get("language", "en")
    if not isinstance(language, str):
        raise ConsentError(422, "invalid_consent_event", f"{where}.notice.language must be a string")
    return NoticeRef(notice["key"], notice["version"], language)


def statements(event: dict[str, Any], source_id: str, timestamp: datetime) -> list[Statement]:
    """The consent statements a `Consent Updated` event makes (the GPC signal is handled apart)."""
    if event.get("type") != "track" or event.get("event") != CONSENT_EVENT:
        return []
    properties = event.get("properties") or {}
    context = event.get("context") or {}
    evidence = {
        "ip": context.get("ip") if isinstance(context.get("ip"), str) else None,
        "user_agent": context.get("userAgent") if isinstance(context.get("userAgent"), str) else None,
        "message_id": event.get("messageId"),
    }
    listed = properties.get("consents")
    if listed is None:
        items, base = [properties], "properties"
    elif isinstance(listed, list) and 0 < len(listed) <= MAX_STATEMENTS and all(isinstance(i, dict) for i in listed):
        items, base = listed, "properties.consents"
    else:
        raise ConsentError(
            422, "invalid_consent_event", f"properties.consents must be a list of 1 to {MAX_STATEMENTS} objects"
        )
    found = []
    for index, item in enumerate(items):
        where = base if listed is None else f"{base}[{index}]"
        tcf = _text(item, "tcf", where)
        purpose = _text(item, "purpose", where)
        if purpose is None and tcf is None:
            raise ConsentError(
                422, "invalid_consent_event", f"{where} needs a purpose (with status) or a tcf consent string"
            )
        if purpose is None and tcf is not None:
            # A TC string alone: kept verbatim under the built-in purpose, decoded when read.
            try:
                granted = bool(service.tcf_summary(tcf)["purposes_consent"])
            except ValueError as error:
                raise ConsentError(422, "invalid_tcf", str(error)) from None
            purpose, status, method = "iab_tcf", ("given" if granted else "refused"), "tcf"
        else:
            stated = _text(item, "status", where)
            if stated is None:
                raise ConsentError(422, "invalid_consent_event", f"{where}.status is required")
            status, method = stated, _text(item, "method", where, "banner") or "banner"
        found.append(
            Statement(
                purpose=str(purpose),
                channel=_text(item, "channel", where, "web") or "web",
                status=status,
                method=method,
                notice=_notice(item, where),
                occurred_at=_time(item, "occurred_at", where) or timestamp,
                expires_at=_time(item, "expires_at", where),
                evidence=evidence,
                tcf=tcf,
                source=source_id,
            )
        )
    return found


@dataclass(slots=True)
class Capture:
    """What the pipeline needs to record consent from events: the signing key and the settings."""

    key: SigningKey
    settings: Settings

    def record(self, session: Session, found: list[tuple[str, str, dict[str, Any], datetime]], now: datetime) -> int:
        """Record the consent in (profile_id, source_id, event, timestamp) tuples; returns how many records."""
        pairs: list[tuple[str, Statement]] = []
        gpc = [(profile_id, source_id, event, ts) for profile_id, source_id, event, ts in found if _gpc(event)]
        for profile_id, source_id, event, timestamp in found:
            pairs.extend((profile_id, statement) for statement in statements(event, source_id, timestamp))
        if gpc:
            already = service.sale_refused(session, {profile_id for profile_id, *_ in gpc})
            for profile_id, source_id, event, timestamp in gpc:
                if profile_id in already:
                    continue
                already.add(profile_id)
                context = event.get("context") or {}
                statement = Statement(
                    purpose="sale_sharing",
                    channel="all",
                    status="refused",
                    method="gpc",
                    occurred_at=timestamp,
                    evidence={"ip": context.get("ip"), "message_id": event.get("messageId"), "signal": "Sec-GPC: 1"},
                    source=source_id,
                )
                pairs.append((profile_id, statement))
        if not pairs:
            return 0
        service.record(
            session, pairs, actor={"type": "customer", "id": None}, key=self.key, settings=self.settings, now=now
        )
        return len(pairs)


def is_consent_event(event: dict[str, Any]) -> bool:
    return (event.get("type") == "track" and event.get("event") == CONSENT_EVENT) or _gpc(event)


def _gpc(event: dict[str, Any]) -> bool:
    context = event.get("context")
    return isinstance(context, dict) and context.get("gpc") is True
