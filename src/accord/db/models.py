"""Imports every feature's tables so that the metadata (and Alembic) sees all of them."""

from accord.db.base import Base
from accord.identity.models import Identity, Merge
from accord.ingest.models import QuarantinedEvent
from accord.log.models import LogRecord
from accord.profiles.models import Profile, ProfileEvent
from accord.security.models import ApiToken
from accord.sources.models import Source

__all__ = [
    "ApiToken",
    "Base",
    "Identity",
    "LogRecord",
    "Merge",
    "Profile",
    "ProfileEvent",
    "QuarantinedEvent",
    "Source",
]
