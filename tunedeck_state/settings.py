"""One `Settings` object, read from `TUNEDECK_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from runspec.sources import SourcePolicy

#: The folder the process was started in: a default data root.
_STARTED_IN = Path.cwd().resolve()


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
    method_check_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a submit waits for a worker to check the method against the model (module names, "
        "architecture); without an answer the run is queued and the worker checks at its start (later submits then "
        "wait only briefly until a worker answers again). 0: never check at submit.",
    )
    generate_timeout_seconds: float = Field(
        300.0, gt=0, description="How long the web waits for a worker to load a run's model and generate."
    )
    generation_cache_models: int = Field(
        2, ge=1, description="Models a service worker keeps loaded for generation (least recently used evicted)."
    )
    demo: bool = Field(
        False,
        description="Set by `tunedeck serve --demo`: the new-run form starts from the demo model and data "
        "(once `tunedeck demo prepare` has built them).",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = Field(
        None,
        description="When set, every API call needs `Authorization: Bearer <token>` and pages need a login. "
        "Required to bind anything but a loopback address.",
    )
    allowed_hosts: str = Field(
        "",
        description="Without a token only loopback Host headers are answered (DNS rebinding); extra host names "
        "to answer, comma-separated.",
    )
    session_max_age_seconds: int = Field(12 * 3600, ge=60, description="How long a page login lasts.")
    secure_cookies: bool = Field(False, description="Mark the login cookie Secure (set when served over https).")
    max_request_bytes: int = Field(
        1 * 2**20,
        ge=1024,
        description="Largest request body answered (413 above); a route may allow more with FastAPI's "
        "max_body_size (uploads).",
    )
    data_roots: str | None = Field(
        None,
        description="Colon-separated folders local models and datasets must resolve into (after symlinks). "
        "Default: the data directory and the folder the process was started in.",
    )
    remote_code_allowlist: str = Field(
        "",
        description="Hub model ids whose custom code may run, each pinned to a commit: "
        "'org/name@<40-hex commit>', comma-separated. Everything else loads with trust_remote_code=False.",
    )

    @field_validator("remote_code_allowlist")
    @classmethod
    def _pinned_revisions(cls, value: str) -> str:
        from runspec.sources import parse_remote_code_allowlist

        parse_remote_code_allowlist(value)  # refused at start: every entry needs a pinned commit
        return value

    metric_flush_seconds: float = Field(
        0.25,
        gt=0,
        description="How often a worker writes buffered metrics (one transaction each): a logged point is readable "
        "this long after it was logged, at most. The dashboard's pages redraw within a second.",
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running run proves it is alive.")
    heartbeat_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A running run whose worker has written nothing for this long is marked failed (worker lost). "
        "At least 3× the heartbeat interval (the smaller of METRIC_FLUSH_SECONDS and HEARTBEAT_SECONDS).",
    )
    training_time_limit_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="Hard limit on one training attempt (Celery's task time limit)."
    )
    embedded_broker_poll_seconds: float = Field(
        0.1,
        gt=0,
        le=60,
        description="Embedded (SQLite) broker: how often an idle worker looks for a new task, and so how long a "
        "task may wait before a worker sees it (kombu's default is 1 s; each look is a few small queries). Redis "
        "delivers at once.",
    )
    broker_visibility_timeout_seconds: float = Field(
        8 * 24 * 3600.0,
        gt=0,
        description="Redis broker: an unacknowledged task is handed to another worker after this long. Must be "
        "longer than TRAINING_TIME_LIMIT_SECONDS, or a long training would be delivered twice.",
    )
    worker_concurrency: int = Field(
        1,
        ge=1,
        description="Tasks one worker runs at a time. A training worker with GPUs defaults to one training per GPU "
        "(times WORKER_RUNS_PER_GPU) unless this is set.",
    )
    worker_name: str | None = Field(
        None,
        max_length=200,
        description="This worker's name, unique among workers (default: <queues>@<host>); one without @ gets @<host>. "
        "Runs pinned to a worker (placement.worker) name it.",
    )
    worker_runs_per_gpu: int = Field(
        1,
        ge=1,
        le=16,
        description="Trainings a worker may run on one GPU at the same time; a second run starts on a GPU only when "
        "the memory estimates of the runs on it fit together in its memory.",
    )
    worker_fake_gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="Tests only: a worker without a GPU declares one GPU of this much memory (it still trains on "
        "its CPU), so placement by memory can be tested on any machine.",
    )
    worker_fake_gpu_count: int = Field(
        1,
        ge=1,
        le=8,
        description="Tests only: how many fake GPUs of WORKER_FAKE_GPU_MEMORY_GIB a worker declares; a `--multi-gpu` "
        "worker trains a run on several of them with one CPU process each (gloo).",
    )
    placement_margin_fraction: float = Field(
        0.10,
        ge=0,
        le=4,
        description="Placement: a run goes to a GPU whose free memory holds its estimate plus this fraction.",
    )
    max_upload_bytes: int = Field(
        512 * 2**20, ge=1024, description="Largest dataset upload (POST /api/datasets, the Datasets page); 413 above."
    )
    hub_endpoint: str | None = Field(
        None, description="Hugging Face hub address for pushes. Default: huggingface_hub's (or HF_ENDPOINT)."
    )
    hub_offline: bool = Field(False, description="Never reach the Hugging Face hub (sets HF_HUB_OFFLINE).")

    require_services: bool = Field(
        False, description="Tests: fail instead of skipping when Postgres or Redis are unreachable."
    )
    keep_checkpoints: int = Field(
        2,
        ge=0,
        le=100,
        description="Checkpoints a run keeps unless its spec says (placement.keep_checkpoints): the newest N; 0 keeps "
        "one while training and removes it when the run succeeds.",
    )
    test_step_delay_seconds: float = Field(
        0.0, ge=0, description="Tests only: sleep this long after every training step (to act mid-run)."
    )
    test_memory_headroom_mb: int | None = Field(
        None,
        ge=1,
        description="Tests only: cap a training process's address space at its size when training starts plus "
        "this many MiB, to simulate running out of memory on a CPU.",
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
    def uploads_dir(self) -> Path:
        """Uploaded datasets, each under a generated name."""
        return self.resolved_data_dir / "uploads"

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

    @property
    def resolved_data_roots(self) -> tuple[Path, ...]:
        """The data directory (uploads, run artifacts) plus TUNEDECK_DATA_ROOTS, or the folder started in."""
        if self.data_roots:
            extra = tuple(Path(p.strip()).expanduser().resolve() for p in self.data_roots.split(":") if p.strip())
        else:
            extra = (_STARTED_IN,)
        return (self.resolved_data_dir, *extra)

    @property
    def remote_code_revisions(self) -> dict[str, str]:
        from runspec.sources import parse_remote_code_allowlist

        return parse_remote_code_allowlist(self.remote_code_allowlist)

    def source_policy(self) -> SourcePolicy:
        """What local paths and custom code a run may use (checked on submit and again on the worker)."""
        from runspec.sources import SourcePolicy

        return SourcePolicy(data_roots=self.resolved_data_roots, remote_code=self.remote_code_revisions)

    def ensure_dirs(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
