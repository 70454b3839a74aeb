"""The consent API's request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Text = Field(max_length=1000)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


# Keys, names and texts of the catalogue and of a statement: no NUL (PostgreSQL stores none in text).
# Evidence is kept verbatim instead, NULs included.
Name = Annotated[str, AfterValidator(_no_nul)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PurposeWrite(Strict):
    name: Name = Field(min_length=1, max_length=200)
    description: Name = Field(default="", max_length=5000)
    legal_basis: Literal[
        "consent", "contract", "legal_obligation", "vital_interest", "public_task", "legitimate_interest"
    ]
    expires_after_days: int | None = Field(default=None, ge=1, le=36500)
    channels: list[Name] = Field(default_factory=list, max_length=50, description="Offered in the preference centre")


class PurposeRead(BaseModel):
    key: str
    name: str
    description: str
    legal_basis: str
    dpv: str = Field(description="The legal basis in the W3C Data Privacy Vocabulary")
    expires_after_days: int | None
    channels: list[str]
    version: int
    builtin: bool
    created_at: datetime | None
    updated_at: datetime | None


class PurposeList(BaseModel):
    purposes: list[PurposeRead]


class ChannelWrite(Strict):
    key: Name = Field(min_length=1, max_length=60)
    name: Name = Field(min_length=1, max_length=200)


class ChannelRead(BaseModel):
    key: str
    name: str
    builtin: bool


class ChannelList(BaseModel):
    channels: list[ChannelRead]


class NoticeWrite(Strict):
    key: Name = Field(min_length=1, max_length=120)
    language: Name = Field(default="en", min_length=2, max_length=20)
    title: Name = Field(min_length=1, max_length=300)
    text: Name = Field(min_length=1, max_length=200_000)
    purposes: list[Name] = Field(min_length=1, max_length=100)
    url: Name | None = Field(default=None, max_length=1000)


class NoticeRead(BaseModel):
    key: str
    version: int
    language: str
    title: str
    text: str
    purposes: list[str]
    url: str | None
    sha256: str = Field(description="SHA-256 of the title, two newlines and the text")
    created_at: datetime


class NoticeList(BaseModel):
    notices: list[NoticeRead]


class NoticeRefWrite(Strict):
    key: Name = Field(max_length=120)
    version: int = Field(ge=1, le=1_000_000)
    language: Name = Field(default="en", max_length=20)


class EvidenceWrite(Strict):
    ip: str | None = Field(default=None, max_length=100)
    user_agent: str | None = Field(default=None, max_length=1000)
    reference: str | None = Field(default=None, max_length=1000, description="Call recording, form or ticket reference")
    note: str | None = Field(default=None, max_length=2000)


class ConsentWrite(Strict):
    purpose: Name = Field(max_length=120)
    channel: Name = Field(max_length=60)
    status: Literal["given", "refused", "withdrawn", "renewed"]
    method: Literal["banner", "form", "double_opt_in", "verbal", "paper_form", "api"]
    notice: NoticeRefWrite | None = None
    occurred_at: datetime | None = Field(default=None, description="When the person said it; default now")
    expires_at: datetime | None = None
    evidence: EvidenceWrite = Field(default_factory=EvidenceWrite)
    tcf: Name | None = Field(default=None, max_length=4000, description="An IAB TCF v2 TC string, kept verbatim")


class RecordRead(BaseModel):
    """A ledger record: its hashed body (plus the chain fields), its hash, and the evidence if not erased."""

    id: str
    seq: int
    prev: str
    hash: str
    profile_id: str
    purpose: str
    channel: str
    status: str
    legal_basis: str
    method: str
    actor: dict[str, Any]
    notice: dict[str, Any] | None
    source: str | None
    occurred_at: datetime
    expires_at: datetime | None
    recorded_at: datetime
    evidence_digest: str | None
    evidence: dict[str, Any] | None
    tcf: str | None
    tcf_decoded: dict[str, Any] | None = None
    confirms: str | None = Field(default=None, description="Double opt-in: the pending record this confirms")


class ConsentCreated(BaseModel):
    record: RecordRead
    receipt: str = Field(description="The signed receipt, a compact JWS (Ed25519); keys at /.well-known/jwks.json")
    confirmation_url: str | None = Field(default=None, description="Double opt-in: the link the person must open")


class StateRead(BaseModel):
    purpose: str
    channel: str
    status: str = Field(description="As of now: a grant past its expiry reads expired")
    recorded_status: str
    record_id: str
    occurred_at: datetime
    expires_at: datetime | None


class ConsentsRead(BaseModel):
    profile_id: str
    consents: list[StateRead]


class HistoryRead(BaseModel):
    profile_id: str
    records: list[RecordRead]
    next_after: int | None = Field(description="Pass as `after` for the next page; null at the end")


class ReceiptRead(BaseModel):
    record_id: str
    profile_id: str
    created_at: datetime
    receipt: str


class ReceiptsRead(BaseModel):
    profile_id: str
    receipts: list[ReceiptRead]


class ContactableRead(BaseModel):
    allowed: bool
    reason: str
    purpose: str
    channel: str
    legal_basis: str
    record_id: str | None


class ProblemRead(BaseModel):
    seq: int | None
    record_id: str | None
    problem: str


class VerifyRead(BaseModel):
    ok: bool
    records: int
    checkpoints: int
    evidence_checked: int
    head_seq: int
    head_hash: str
    first_bad: ProblemRead | None


class CheckpointRead(BaseModel):
    seq: int
    hash: str
    signed_at: datetime
    jws: str


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointRead]


class RenewalRead(BaseModel):
    profile_id: str
    purpose: str
    channel: str
    status: str
    record_id: str
    expires_at: datetime


class RenewalsRead(BaseModel):
    renewals: list[RenewalRead]


class LinkRead(BaseModel):
    url: str
    expires_at: datetime
