"""One `Settings` object, read from `TUNEDECK_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEDECK_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where SQLite files, uploads and run artifacts live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; Postgres as postgresql+psycopg://... Default: SQLite in data_dir."
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker; redis://... for several machines. Default: a SQLite broker in data_dir.",
    )
    result_backend: str | None = Field(
        None,
        description="Where workers put answers to quick requests (model inspection, estimates, generation). "
        "Default: the Redis broker when one is set, else a SQLite file in data_dir.",
    )
    rpc_timeout_seconds: float = Field(60.0, gt=0, description="How long the web waits for a worker's answer.")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = Field(None, description="Bearer token required by the API when set.")

    metric_flush_seconds: float = Field(1.0, gt=0, description="How often a worker writes buffered metrics.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running run proves it is alive.")
    worker_concurrency: int = Field(1, ge=1, description="Trainings one worker runs at a time.")
    hub_offline: bool = Field(False, description="Never reach the Hugging Face hub (sets HF_HUB_OFFLINE).")

    require_services: bool = Field(
        False, description="Tests: fail instead of skipping when Postgres or Redis are unreachable."
    )

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def runs_dir(self) -> Path:
        return self.resolved_data_dir / "runs"

    @property
    def demo_dir(self) -> Path:
        return self.resolved_data_dir / "demo"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'tunedeck.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_data_dir / 'broker.sqlite'}"

    @property
    def resolved_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{self.resolved_data_dir / 'results.sqlite'}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    def ensure_dirs(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
