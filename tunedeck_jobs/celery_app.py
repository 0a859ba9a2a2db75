"""The Celery app. The web process imports it too (to send tasks by name), so it must not import torch.

One machine: a SQLite broker through kombu's SQLAlchemy transport. Several: Redis (TUNEDECK_BROKER_URL).
Run state lives in tunedeck's own database, so tasks ignore Celery results (service tasks answer through the
result backend: tunedeck_jobs/rpc.py). The worker's own start-up hooks are in worker/signals.py.
"""

from __future__ import annotations

from celery import Celery

from tunedeck_jobs.names import SERVICE_QUEUE, SERVICE_TASK_PREFIX, TRAIN_TASK, TRAINING_QUEUE
from tunedeck_state.settings import Settings, get_settings


def create_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    app = Celery(
        "tunedeck",
        broker=settings.resolved_broker_url,
        backend=settings.resolved_result_backend,
        include=[
            "worker.tasks",
            "worker.inference_tasks",
            "worker.dataset_tasks",
            "worker.search_tasks",
            "worker.heartbeat",
            "worker.signals",
        ],
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
        # Faults (see worker/lost_runs.py): a killed pool process acks its message and fails the run (no
        # redelivery of the same attempt); a lost broker connection leaves the training running, since its
        # state lives in the database, not in the broker.
        task_reject_on_worker_lost=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_annotations={TRAIN_TASK: {"time_limit": settings.training_time_limit_seconds}},
    )
    app.steps["worker"].add("worker.lost_runs:LostRunReaper")
    if settings.uses_embedded_broker:
        # kombu's SQLAlchemy transport hands these to create_engine: wait on SQLite locks instead of failing.
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
        # An idle worker's sleep between looks at its queues (kombu's default is 1 s). Set on the transport class:
        # as a transport option kombu would hand it to create_engine too, which refuses it.
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = settings.embedded_broker_poll_seconds
    else:
        # Redis hands an unacknowledged task to another worker after this long (checked at worker start to
        # be longer than the training time limit: see tunedeck_state/settings_checks.py).
        # Priorities (placement.priority): Redis keeps one list per priority step; ten steps so 0-9 all differ.
        app.conf.broker_transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "priority_steps": list(range(10)),
        }
    return app


celery_app = create_celery(get_settings())
