"""Settings, read from ACCORD_* environment variables (and a `.env` file if present)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCORD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("./.accord"), description="Where the embedded database lives.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file accord.db in the data dir."
    )
    nats_url: str | None = Field(default=None, description="NATS JetStream URL; unset: the sql log.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=8600, description="Port the HTTP server listens on.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    sqlite_synchronous: str = Field(
        default="FULL",
        description="SQLite synchronous pragma: FULL survives power loss, NORMAL only process crashes.",
    )
    worker_batch_size: int = Field(default=500, description="Events a worker takes per transaction.")
    worker_poll_interval: float = Field(
        default=0.05, description="Seconds a worker waits for new log records when idle."
    )
    log_retention_hours: int = Field(
        default=168, description="Hours processed records stay in the event log before purging."
    )

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'accord.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
