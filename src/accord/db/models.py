"""Imports every feature's tables so that the metadata (and Alembic) sees all of them."""

from accord.audit.models import AuditCheckpoint, AuditHead, AuditRecord
from accord.consent.models import (
    ChainHead,
    Channel,
    Checkpoint,
    ConsentState,
    Evidence,
    LedgerRecord,
    Notice,
    Purpose,
    Receipt,
    Subject,
)
from accord.console.models import Note, RecentView
from accord.db.base import Base
from accord.identity.models import Identity, IdentityRules, MatchKey, MatchModel, MatchReview, Merge, SeparationRow
from accord.ingest.models import QuarantinedEvent
from accord.journeys.models import Journey, JourneyPosition, JourneyTransition, JourneyVersion
from accord.log.models import LogRecord
from accord.profiles.models import Profile, ProfileEvent
from accord.rights.models import ErasedIdentifier, Tombstone
from accord.security.models import ApiToken, ConsoleSession, DataKey, User
from accord.segments.models import ComputedTrait, Segment, SegmentMembership, SegmentTransition, SegmentVersion
from accord.sources.models import ImportReject, ImportRun, Schedule, Source, SourceMapping

__all__ = [
    "ApiToken",
    "AuditCheckpoint",
    "AuditHead",
    "AuditRecord",
    "Base",
    "ChainHead",
    "Channel",
    "Checkpoint",
    "ComputedTrait",
    "ConsentState",
    "ConsoleSession",
    "DataKey",
    "ErasedIdentifier",
    "Evidence",
    "Identity",
    "IdentityRules",
    "ImportReject",
    "ImportRun",
    "Journey",
    "JourneyPosition",
    "JourneyTransition",
    "JourneyVersion",
    "LedgerRecord",
    "LogRecord",
    "MatchKey",
    "MatchModel",
    "MatchReview",
    "Merge",
    "Note",
    "Notice",
    "Profile",
    "ProfileEvent",
    "Purpose",
    "QuarantinedEvent",
    "Receipt",
    "RecentView",
    "Schedule",
    "Segment",
    "SegmentMembership",
    "SegmentTransition",
    "SegmentVersion",
    "SeparationRow",
    "Source",
    "SourceMapping",
    "Subject",
    "Tombstone",
    "User",
]
