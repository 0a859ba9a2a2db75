"""The Celery app. Imported by the web process too (to send tasks by name), so it must not import torch.

One machine: a SQLite broker through kombu's SQLAlchemy transport. Several: Redis (TUNEDECK_BROKER_URL).
Run state lives in tunedeck's own database, so tasks ignore Celery results.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init, worker_process_init

from app.services.placement import TRAINING_QUEUE as TRAINING_QUEUE
from app.settings import Settings, get_settings

TRAIN_TASK = "tunedeck.train_run"
#: Long trainings. A worker consuming it runs one training per process, a fresh process each time. Training workers
#: also consume their own queue and memory-class queues (tunedeck.training.mem-24g ...): app/services/placement.py.
#: Quick requests the web process waits for (inspect a model, generate text): torch work it must not do itself.
SERVICE_QUEUE = "tunedeck.service"
SERVICE_TASK_PREFIX = "tunedeck.service."
QUEUES = {"training": TRAINING_QUEUE, "service": SERVICE_QUEUE}


def create_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    app = Celery(
        "tunedeck",
        broker=settings.resolved_broker_url,
        backend=settings.resolved_result_backend,
        include=["worker.tasks", "worker.inference_tasks", "worker.dataset_tasks", "worker.heartbeat"],
    )
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=TRAINING_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAINING_QUEUE}, f"{SERVICE_TASK_PREFIX}*": {"queue": SERVICE_QUEUE}},
        result_expires=3600,
        result_extended=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        task_serializer="json",
        accept_content=["json"],
        # Faults (see worker/lifecycle.py): a killed pool process acks its message and fails the run (no
        # redelivery of the same attempt); a lost broker connection leaves the training running, since its
        # state lives in the database, not in the broker.
        task_reject_on_worker_lost=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_annotations={TRAIN_TASK: {"time_limit": settings.training_time_limit_seconds}},
    )
    app.steps["worker"].add("worker.lifecycle:LostRunReaper")
    if settings.uses_embedded_broker:
        # kombu's SQLAlchemy transport hands these to create_engine: wait on SQLite locks instead of failing.
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
        # An idle worker's sleep between looks at its queues (kombu's default is 1 s). Set on the transport class:
        # as a transport option kombu would hand it to create_engine too, which refuses it.
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = settings.embedded_broker_poll_seconds
    else:
        # Redis hands an unacknowledged task to another worker after this long (checked at worker start to
        # be longer than the training time limit: see app/settings_checks.py).
        # Priorities (placement.priority): Redis keeps one list per priority step; ten steps so 0-9 all differ.
        app.conf.broker_transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "priority_steps": list(range(10)),
        }
    return app


celery_app = create_celery(get_settings())


@worker_init.connect
def _guard_forks(**_: object) -> None:
    """Before the pool starts: no pool process is forked while a thread is inside SQLite (fork_safety.py)."""
    from worker.fork_safety import install

    install()


@worker_init.connect
def _prompt_pool_refill(**_: object) -> None:
    """A finished training's pool process is replaced within 0.2 s, not up to 5 s later (worker/pool.py)."""
    from worker.pool import install

    install()


@worker_process_init.connect
def _fresh_database_connections(**_: object) -> None:
    """A forked pool process must not share the parent's database connections. On a GPU worker it also takes
    its own GPU (CUDA_VISIBLE_DEVICES) before anything initialises CUDA."""
    from app.db import get_engine, get_sessionmaker
    from worker.capacity import pin_process

    get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    pin_process()
