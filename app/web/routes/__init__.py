"""Every route of the dashboard, one module per feature.

The convention: a feature module declares `api_router` (JSON under /api, in the OpenAPI schema) and `page_router`
(HTML pages and their htmx fragments, left out of the schema), either possibly empty; this package mounts them
all, in FEATURES order. Order matters where paths overlap: /runs/new and /runs/bulk/... before /runs/{run_id}.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.web.routes import (
    catalog,
    compare,
    datasets,
    estimate,
    exports,
    inference,
    manage,
    new_run,
    runs,
    sweeps,
    workers,
)

FEATURES = (new_run, manage, runs, catalog, inference, sweeps, compare, datasets, exports, estimate, workers)

api_router = APIRouter(prefix="/api")
page_router = APIRouter(include_in_schema=False)
for _feature in FEATURES:
    api_router.include_router(_feature.api_router)
    page_router.include_router(_feature.page_router)
