"""docker-compose.yml stays consistent with the code: no Docker engine runs here, so parse and check it."""

from __future__ import annotations

import re
from typing import Any

import yaml

from app.settings import Settings
from tests.stack import ROOT


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_services_and_shared_storage() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "web", "worker"} <= set(services)
    web, worker = services["web"], services["worker"]
    assert "tunedeck db upgrade" in " ".join(web["command"]), "web must run migrations before serving"
    assert "--no-worker" in " ".join(web["command"])
    assert worker["command"][:2] == ["tunedeck", "worker"]
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    # Artifacts live on storage both reach.
    data_dir = web["environment"]["TUNEDECK_DATA_DIR"]
    assert any(v.endswith(":" + data_dir) for v in web["volumes"])
    assert set(web["volumes"]) == set(worker["volumes"])


def test_compose_variables_are_real_settings() -> None:
    settings_fields = set(Settings.model_fields)
    for name in ("web", "worker"):
        env = _compose()["services"][name]["environment"]
        for variable in env:
            if variable.startswith("TUNEDECK_"):
                assert variable.removeprefix("TUNEDECK_").lower() in settings_fields, variable
        assert env["TUNEDECK_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TUNEDECK_BROKER_URL"].startswith("redis://")


def test_dockerfiles_copy_what_the_app_needs() -> None:
    for dockerfile in ("docker/web.Dockerfile", "docker/worker.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        copied = set(re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE))
        assert {"app", "runspec", "worker", "templates", "migrations"} <= copied, dockerfile
    assert '-e ".[train]"' in (ROOT / "docker/worker.Dockerfile").read_text()
