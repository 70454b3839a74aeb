"""Settings, read from ACCORD_* environment variables (and a `.env` file if present)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


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
    tls_certfile: Path | None = Field(default=None, description="PEM certificate: serve HTTPS (with the key).")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key for the certificate.")
    cors_origins: list[str] = Field(
        default=["*"], description="Origins browsers may send tracking calls from (JSON list); [] for none."
    )
    rate_limit_tracking: str = Field(
        default="2000/second", description="Tracking requests allowed per write key; empty or 0: no limit."
    )
    rate_limit_api: str = Field(
        default="200/second", description="REST API requests allowed per token; empty or 0: no limit."
    )
    rate_limit_storage: str = Field(
        default="memory://", description="Where rate-limit counters live: memory:// (per process) or redis://..."
    )
    sqlite_synchronous: str = Field(
        default="FULL",
        description="SQLite synchronous pragma: FULL survives power loss, NORMAL only process crashes.",
    )
    worker_batch_size: int = Field(
        default=500, ge=1, description="Events a worker takes per transaction (runs may grow while a backlog drains)."
    )
    worker_max_batch_size: int = Field(
        default=4000,
        ge=1,
        description="While a backlog drains, runs double up to this many events (at least the batch size).",
    )
    worker_yield_seconds: float = Field(
        default=10.0,
        ge=0,
        description="SQLite: once another writer commits (a profile read's audit record), transactions stay at the "
        "batch size for this long (0: never).",
    )
    worker_cache_mib: int = Field(
        default=64, ge=1, le=65536, description="SQLite: MiB of database pages each worker connection keeps in memory."
    )
    worker_poll_interval: float = Field(
        default=0.02, description="Seconds a worker waits for new log records when idle."
    )
    stream_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Seconds between a live stream's reads when no worker in this process or its child reports"
        " commits (workers on other machines); with one that does, streams read as soon as it commits.",
    )
    segment_sweep_seconds: float = Field(
        default=60.0, ge=0, description="How often workers re-evaluate time-window segments; 0: never."
    )
    segment_history_events: int = Field(
        default=100_000,
        ge=0,
        description="Events of long histories a worker keeps opened between runs (about 430 bytes each); 0: none.",
    )
    public_url: str | None = Field(
        default=None,
        description="The URL customers reach Accord at (preference-centre links); default: http://host:port.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs consent receipts, checkpoints and links; "
        "default: keys/consent-signing.pem in the data dir, created on first start.",
    )
    kek_file: Path | None = Field(
        default=None,
        description="Key-encryption keys (JSON) that wrap the per-profile data keys; "
        "default: keys/kek.json in the data dir, created on first start.",
    )
    blind_index_key_file: Path | None = Field(
        default=None,
        description="HMAC key of the blind indexes that find encrypted identifiers; "
        "default: keys/blind-index.json in the data dir, created on first start.",
    )
    controller_name: str = Field(default="", description="The data controller named in consent receipts.")
    controller_contact: str = Field(
        default="", description="The controller's contact (e.g. a DPO address) in receipts."
    )
    jurisdiction: str = Field(default="", description="The jurisdiction named in consent receipts, e.g. EU or US-CA.")
    consent_checkpoint_records: int = Field(
        default=1000, ge=1, description="Sign a ledger checkpoint after at most this many new consent records."
    )
    consent_checkpoint_seconds: float = Field(
        default=60.0, gt=0, description="... or when the last checkpoint is older than this and records were added."
    )
    preference_link_days: int = Field(default=30, ge=1, le=366, description="How long a preference-centre link works.")
    schedule_poll_seconds: float = Field(
        default=30.0, ge=0, description="How often each API process runs due schedules; 0: never (no poller)."
    )
    import_rejects_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Days an import run's rejected rows (which may hold personal data) are kept.",
    )
    import_max_bytes: int = Field(
        default=2 * 1024**3, ge=1024, description="Largest file an import upload may send (bytes)."
    )
    double_opt_in_days: int = Field(default=7, ge=1, le=90, description="How long a double opt-in link works.")
    console_session_hours: float = Field(
        default=12, gt=0, le=24 * 30, description="A console login ends this long after it began, whatever happens."
    )
    console_idle_minutes: float = Field(
        default=30, gt=0, le=24 * 60, description="... or after this long without a request."
    )
    rate_limit_login: str = Field(
        default="20/minute", description="Console login attempts allowed per client address; empty or 0: no limit."
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID Connect provider's issuer URL (its discovery document is read from "
        "ISSUER/.well-known/openid-configuration); unset: no single sign-on, passwords only.",
    )
    oidc_client_id: str = Field(default="", description="The client id Accord is registered under at the provider.")
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="The client secret; prefer ACCORD_OIDC_CLIENT_SECRET_FILE. Unset: a public client."
    )
    oidc_client_secret_file: Path | None = Field(
        default=None, description="A file whose content (trimmed) is the client secret."
    )
    oidc_redirect_url: str | None = Field(
        default=None,
        description="The callback URL registered at the provider; default: "
        "ACCORD_PUBLIC_URL (or the request's own URL)/console/login/oidc/callback.",
    )
    oidc_scopes: str = Field(default="openid email profile", description="Scopes asked for, space-separated.")
    oidc_role_claim: str = Field(
        default="groups", description="The ID token claim (a string or a list of strings) that decides the role."
    )
    oidc_role_map: dict[str, str] = Field(
        default={},
        description='JSON object from a value of the role claim to an Accord role, e.g. {"accord-admins": "admin"}; '
        "the first entry the user has wins. A user with none is refused.",
    )
    oidc_name: str = Field(default="single sign-on", description="What the login button calls the provider.")
    oidc_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long Accord waits for the provider on each request."
    )

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'accord.db'}"

    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "consent-signing.pem"

    def kek_path(self) -> Path:
        return self.kek_file or self.data_dir / "keys" / "kek.json"

    def blind_index_key_path(self) -> Path:
        return self.blind_index_key_file or self.data_dir / "keys" / "blind-index.json"

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def log_url(self) -> str:
        """Where the sql event log lives: beside an SQLite database in a file of its own, else with it."""
        url = make_url(self.sqlalchemy_url())
        if url.get_backend_name() != "sqlite":
            return self.sqlalchemy_url()
        main = Path(url.database or "")
        return str(url.set(database=str(main.with_name(f"{main.stem}-log{main.suffix or '.db'}"))))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
