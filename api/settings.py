"""Settings from the environment (prefix ``QS_``), with embedded defaults.

With nothing set, everything lives under ``./var``: SQLite, a local blob directory and kombu's
filesystem broker, so one command runs the whole product on a fresh machine. Production shape:
``QS_DATABASE_URL=postgresql+psycopg://…`` and ``QS_BROKER_URL=redis://…``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QS_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Root of every embedded default.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in data_dir."
    )
    broker_url: str | None = Field(None, description="Celery broker; default filesystem broker.")
    blob_dir: Path | None = Field(
        None, description="Blob storage directory; default data_dir/blobs."
    )
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="Largest accepted upload.")
    max_archive_members: int = Field(
        100_000, ge=1, description="Most entries (files and folders) in a dataset archive."
    )
    max_archive_bytes: int = Field(
        4 * 2**30,
        ge=1,
        description="Largest total unpacked size of a dataset archive (declared and as read).",
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Largest image (width x height) in a dataset archive."
    )
    job_time_limit_s: int = Field(6 * 3600, ge=1, description="Hard time limit of one job.")
    job_lease_s: int = Field(
        120,
        ge=5,
        description="A running job whose worker sent no heartbeat "
        "for this long may be claimed again (its worker died).",
    )
    worker_report_s: float = Field(
        60,
        ge=0.5,
        le=3600,
        description="Workers report their device and its memory this often; the API ignores a "
        "worker silent for three intervals when it admits jobs.",
    )
    worker_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="Workers report at most this much device memory (to keep room for other "
        "work on a shared host); default: all of it.",
    )
    memory_usable_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of a worker device's memory a job may be estimated to need (the "
        "rest covers the CUDA context, the allocator's fragmentation and the estimate's error).",
    )
    broker_visibility_timeout_s: int = Field(
        7 * 3600,
        ge=10,
        description="Redis: an unacknowledged job message is delivered again "
        "after this long; keep it above the job time limit.",
    )
    db_pool_size: int = Field(20, ge=1, le=1000, description="Database connections kept open.")
    db_max_overflow: int = Field(10, ge=0, le=1000, description="Extra connections under load.")
    max_concurrent_requests: int = Field(
        20,
        ge=1,
        le=1000,
        description="Requests served at once (others wait their turn); keep "
        "it at most db_pool_size + db_max_overflow so a request never waits for a connection.",
    )
    auto_migrate: bool = Field(False, description="Upgrade the database to head at start.")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (for log collectors)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    session_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long a browser login lasts.")
    cookie_secure: bool | None = Field(
        None,
        description="Mark the session cookie Secure; default: when the request came over https.",
    )
    login_window_s: int = Field(
        300, ge=1, description="Window of the login rate limit, in seconds."
    )
    login_max_failures: int = Field(
        5, ge=1, description="Failed logins for one user name within the window before 429."
    )
    login_max_failures_per_client: int = Field(
        30, ge=1, description="Failed logins from one client address within the window before 429."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'quant.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def work_dir(self) -> Path:
        """Scratch space of the workers: checkpoints of running jobs."""
        return (self.data_dir / "work").resolve()
