"""What a running Accord process holds: settings, the database and the event log."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from fastapi import Request

from accord.audit.writer import AuditWriter
from accord.config import Settings
from accord.consent.keys import SigningKey
from accord.db.engine import Database
from accord.log.sql import SqlEventLog
from accord.pipeline.commits import Commits
from accord.security.limits import RateLimits
from accord.security.logkeys import LogKeys
from accord.security.oidc import OidcConfig, OidcProvider

# Cyclic garbage collection for the long-running processes. With CPython's default (a young collection
# every 700 net allocations, an old one every 100 young) the worker spent about a tenth of its CPU time in
# the collector, most of it walking the same long-lived objects (modules, compiled SQL, caches) again and
# again; see docs/performance.md. Reference counting still frees nearly everything at once; only cycles
# wait longer.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """For `accord up`, `serve` and `worker`, once started: what exists now (code, settings, caches) is
    moved out of the collector's sight, and collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    db: Database
    log: SqlEventLog
    limits: RateLimits
    signing: SigningKey
    audit: AuditWriter = field(init=False)  # the audit records of reads, group-committed
    oidc: OidcProvider | None = None  # single sign-on, when ACCORD_OIDC_ISSUER is set
    commits: Commits = field(default_factory=Commits)  # the pipeline's commits, which wake the live streams

    def __post_init__(self) -> None:
        self.audit = AuditWriter(self.db, self.signing)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        if settings.nats_url:
            raise NotImplementedError(
                "ACCORD_NATS_URL is set, but the JetStream event log is not built yet; unset it to use the sql log"
            )
        limits = RateLimits(
            tracking=settings.rate_limit_tracking,
            api=settings.rate_limit_api,
            login=settings.rate_limit_login,
            storage_url=settings.rate_limit_storage,
        )
        config = OidcConfig.from_settings(settings)
        oidc = OidcProvider(config) if config else None
        signing = SigningKey.load_or_create(settings.signing_key_path())
        db = Database.from_settings(settings)
        log_url = settings.log_url()
        keys = LogKeys(db)
        if log_url == db.url:
            return cls(settings=settings, db=db, log=SqlEventLog(db, keys), limits=limits, signing=signing, oidc=oidc)
        log = SqlEventLog(Database(log_url, sqlite_synchronous=settings.sqlite_synchronous), keys)
        log.ensure_file_schema()
        return cls(settings=settings, db=db, log=log, limits=limits, signing=signing, oidc=oidc)

    def close(self) -> None:
        self.audit.close()
        self.log.close()
        if self.log.db is not self.db:
            self.log.db.dispose()
        self.db.dispose()


def runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value
