"""Prometheus metrics at /metrics, read from the database at each scrape (prometheus-client).

tunedeck_runs{state}, tunedeck_queue_length, tunedeck_workers{queues}, tunedeck_gpu_memory_*_bytes{worker,gpu}
(from the workers' heartbeats, where nvidia-smi tells), tunedeck_run_memory_bytes{run_id,device} (peak memory
of running runs), tunedeck_runs_disk_bytes, tunedeck_data_dir_{total,free}_bytes, tunedeck_info{version}.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tunedeck_state import __version__, disk
from tunedeck_state import workers as worker_service
from tunedeck_state.db import session_scope
from tunedeck_state.models import Run, RunStatus
from tunedeck_state.settings import get_settings

router = APIRouter(include_in_schema=False)


class TunedeckCollector(Collector):
    def collect(self) -> Iterator[Any]:
        settings = get_settings()
        with session_scope() as session:
            counts = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
            running = session.execute(
                select(Run.id, Run.latest_metrics, Run.details).where(Run.status == RunStatus.running)
            ).all()
            workers = worker_service.live_workers(session, settings.heartbeat_seconds)

            runs = GaugeMetricFamily("tunedeck_runs", "Runs by state.", labels=["state"])
            for state in RunStatus:
                runs.add_metric([state.value], float(counts.get(state.value, 0)))
            yield runs
            yield GaugeMetricFamily(
                "tunedeck_queue_length", "Runs queued and not yet claimed by a worker.", value=counts.get("queued", 0)
            )

            per_queues: dict[str, int] = {}
            gpu_total = GaugeMetricFamily(
                "tunedeck_gpu_memory_total_bytes", "GPU memory per worker GPU.", labels=["worker", "gpu", "name"]
            )
            gpu_used = GaugeMetricFamily(
                "tunedeck_gpu_memory_used_bytes", "GPU memory in use per worker GPU.", labels=["worker", "gpu", "name"]
            )
            for worker in workers:
                per_queues[worker.queues] = per_queues.get(worker.queues, 0) + 1
                for gpu in (worker.details or {}).get("gpus") or []:
                    labels = [worker.name, str(gpu.get("index", 0)), str(gpu.get("name", ""))]
                    gpu_total.add_metric(labels, float(gpu.get("memory_total_bytes", 0)))
                    gpu_used.add_metric(labels, float(gpu.get("memory_used_bytes", 0)))
            count = GaugeMetricFamily(
                "tunedeck_workers", "Live worker processes, by the queues they consume.", labels=["queues"]
            )
            for queues, n in sorted(per_queues.items()):
                count.add_metric([queues], float(n))
            yield count
            yield GaugeMetricFamily("tunedeck_workers_total", "Live worker processes.", value=len(workers))
            yield gpu_total
            yield gpu_used

            memory = GaugeMetricFamily(
                "tunedeck_run_memory_bytes",
                "Latest memory of a running run: peak CUDA memory on a GPU, resident memory on a CPU.",
                labels=["run_id", "device"],
            )
            for run_id, latest, details in running:
                value = ((latest or {}).get("memory_bytes") or {}).get("value")
                if value is not None:
                    memory.add_metric([str(run_id), str((details or {}).get("device", "unknown"))], float(value))
            yield memory
            yield GaugeMetricFamily(
                "tunedeck_runs_disk_bytes",
                "Bytes the runs' folders hold (checkpoints, results, merged models), as last measured.",
                value=float(session.scalar(select(func.coalesce(func.sum(Run.disk_bytes), 0))) or 0),
            )
        usage = disk.data_dir_usage(settings)
        if usage is not None:
            yield GaugeMetricFamily(
                "tunedeck_data_dir_total_bytes", "Size of the filesystem holding the data directory.", usage.total_bytes
            )
            yield GaugeMetricFamily(
                "tunedeck_data_dir_free_bytes", "Free space on the data directory's filesystem.", usage.free_bytes
            )
        info = InfoMetricFamily("tunedeck", "tunedeck build information.")
        info.add_metric([], {"version": __version__})
        yield info


_registry = CollectorRegistry(auto_describe=False)
_registry.register(TunedeckCollector())


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(_registry), media_type=CONTENT_TYPE_LATEST)
