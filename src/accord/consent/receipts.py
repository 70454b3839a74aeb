"""Consent receipts after the Kantara Consent Receipt v1.1 structure (the basis of ISO/IEC TS 27560),
signed as a compact JWS with Ed25519 so that anyone can verify them offline against the JWKS."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from accord.config import Settings
from accord.consent.catalogue import LEGAL_BASES, PurposeView
from accord.consent.keys import SigningKey

RECEIPT_TYP = "accord-consent-receipt+jwt"
VERSION = "KI-CR-v1.1.0"
# Kantara's consentType: how the statement was made.
CONSENT_TYPES = {
    "banner": "EXPLICIT",
    "form": "EXPLICIT",
    "double_opt_in": "EXPLICIT",
    "preference_centre": "EXPLICIT",
    "paper_form": "EXPLICIT",
    "verbal": "EXPLICIT",
    "gpc": "SIGNAL",
    "tcf": "EXPLICIT",
    "expiry": "SYSTEM",
    "api": "EXPLICIT",
}


def _seconds(text: str | None) -> int | None:
    return None if text is None else int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def build(body: dict[str, Any], record_hash: str, purpose: PurposeView, settings: Settings) -> dict[str, Any]:
    notice = body.get("notice") or {}
    return {
        "iss": settings.base_url(),
        "iat": _seconds(body["recorded_at"]),
        "jti": body["id"],
        "version": VERSION,
        "jurisdiction": settings.jurisdiction,
        "consentTimestamp": _seconds(body["occurred_at"]),
        "collectionMethod": body["method"],
        "consentReceiptID": body["id"],
        "language": notice.get("language"),
        "piiPrincipalId": body["profile_id"],
        "piiControllers": [{"piiController": settings.controller_name, "contact": settings.controller_contact}],
        "policyUrl": notice.get("url"),
        "services": [
            {
                "service": body["channel"],
                "purposes": [
                    {
                        "purpose": purpose.key,
                        "purposeCategory": [purpose.name],
                        "consentType": CONSENT_TYPES.get(body["method"], "EXPLICIT"),
                        "legalBasis": LEGAL_BASES[purpose.legal_basis],
                        "primaryPurpose": True,
                        "termination": body["expires_at"],
                        "thirdPartyDisclosure": False,
                    }
                ],
            }
        ],
        "sensitive": False,
        "spiCat": [],
        # What Kantara's structure has no field for: the statement itself and where it sits in the ledger.
        "status": body["status"],
        "notice": notice or None,
        "actor": body["actor"],
        "ledger": {"seq": body["seq"], "hash": record_hash, "prev": body["prev"]},
    }


def sign(payload: dict[str, Any], key: SigningKey) -> str:
    return key.sign(payload, typ=RECEIPT_TYP)
