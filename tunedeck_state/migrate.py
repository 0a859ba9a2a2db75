"""Apply Alembic migrations programmatically (`tunedeck db upgrade`, and on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from tunedeck_state.db import get_engine

_HERE = Path(__file__).resolve().parent


def _packaged_or_checkout(name: str) -> Path:
    """Installed from a wheel, migrations/ and alembic.ini are package data beside this module; in a checkout,
    they are the repository's top-level ones."""
    return next(p for p in (_HERE / name, _HERE.parent / name) if p.exists())


def alembic_config() -> Config:
    config = Config(str(_packaged_or_checkout("alembic.ini")))
    config.set_main_option("script_location", str(_packaged_or_checkout("migrations")))
    return config


def upgrade_database(revision: str = "head") -> None:
    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
