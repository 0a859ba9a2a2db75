"""The page templates: one Jinja2Blocks environment, so a page and its htmx fragments render from one template."""

from __future__ import annotations

from pathlib import Path

from jinja2_fragments.fastapi import Jinja2Blocks
from starlette.requests import Request

from app.web import formatting

_APP_DIR = Path(__file__).resolve().parent.parent
#: Installed from a wheel, the templates are package data (app/templates); in a checkout, the top-level folder.
TEMPLATES_DIR = next(p for p in (_APP_DIR / "templates", _APP_DIR.parent / "templates") if p.is_dir())
STATIC_DIR = _APP_DIR / "static"

templates = Jinja2Blocks(directory=str(TEMPLATES_DIR))
formatting.register(templates.env)


def is_htmx(request: Request) -> bool:
    """An htmx request: answer with the named block, not the whole page."""
    return request.headers.get("HX-Request") == "true"
