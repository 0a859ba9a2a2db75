"""Shared fixtures: tiny models and data the project builds itself, and real stacks (server + Celery worker).

One worker per stack is shared by the tests of a session; each test makes its own runs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from harness.stack import ROOT, Stack, running_stack, stack_env

ASSETS_ROOT = ROOT / ".cache" / "test-assets"
REQUIRE_SERVICES = os.environ.get("TUNEDECK_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get("TUNEDECK_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNEDECK_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def tiny_assets() -> Any:
    """A Bloom of a few hundred thousand parameters and the bundled alpaca-style data."""
    from tunedeck_demo.demo_assets import prepare_demo_assets

    return prepare_demo_assets(ASSETS_ROOT, arch="bloom", hidden_size=64, num_layers=2, num_heads=4)


@pytest.fixture(scope="session")
def tiny_llama(tiny_assets: Any) -> Any:
    from tunedeck_demo.demo_assets import prepare_demo_assets

    return prepare_demo_assets(ASSETS_ROOT, arch="llama", hidden_size=64, num_layers=2, num_heads=4)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_assets: Any) -> Any:
    from tunedeck_demo.demo_assets import prepare_demo_assets

    return prepare_demo_assets(ASSETS_ROOT, arch="gpt2", hidden_size=64, num_layers=2, num_heads=4)


def tiny_spec(assets: Any, name: str = "test", **overrides: Any) -> dict[str, Any]:
    """A run spec on the tiny model: short, fast, enough steps for the loss to fall.

    Overrides of dataset and training are merged into the defaults; a method override replaces it."""
    spec: dict[str, Any] = {
        "name": name,
        "model": str(assets.model_dir),
        "dataset": {"source": str(assets.dataset_path), "eval_fraction": 0.05, "max_samples": 400},
        "method": {"name": "lora", "r": 8, "lora_alpha": 16},
        "training": {"max_steps": 30, "learning_rate": 5e-3, "batch_size": 8, "max_length": 128, "eval_steps": 10},
    }
    for key, value in overrides.items():
        if key != "method" and isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@pytest.fixture(scope="session")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    """One machine: SQLite and the embedded broker, a server and one worker."""
    data_dir = tmp_path_factory.mktemp("sqlite-stack")
    yield from running_stack(data_dir, stack_env(data_dir))


def _services_unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"PostgreSQL/Redis required (TUNEDECK_REQUIRE_SERVICES=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    import sqlalchemy as sa

    name = f"tunedeck_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _services_unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL)
        client.ping()
        client.flushdb()
    except Exception as exc:
        _services_unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def services_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any, postgres_url: str, redis_url: str
) -> Iterator[Stack]:
    """Several machines' setup on one: PostgreSQL and Redis, a server and one worker."""
    data_dir = tmp_path_factory.mktemp("services-stack")
    yield from running_stack(data_dir, stack_env(data_dir, database_url=postgres_url, broker_url=redis_url))


#: Debian's chromium under Playwright: no sandbox (containers, root), nothing fetched in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"a real browser is required (TUNEDECK_REQUIRE_SERVICES=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    """One headless chromium for the session (Playwright cannot download its own browser here: `make browser`)."""
    executable = shutil.which("chromium")
    if executable is None:
        _browser_unavailable("chromium is not installed (`make browser` installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _browser_unavailable(f"Playwright's Python package is missing ({exc}); run `make install`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser: Any) -> Iterator[Any]:
    """A fresh page (own cookies and storage) in the session's chromium; closed after the test."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()
