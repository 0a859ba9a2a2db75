"""docker-compose.yml stays consistent with the code: no Docker engine runs here, so parse and check it."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml

from harness.stack import ROOT
from tunedeck_state.settings import Settings


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
    for name in ("web", "worker", "service"):
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
        packages = {"app", "runspec", "worker", "tunedeck_state", "tunedeck_jobs", "tunedeck_cli"}
        assert packages | {"templates", "migrations"} <= copied, dockerfile
    assert '-e ".[train,gpu]"' in (ROOT / "docker/worker.Dockerfile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("liger-kernel") for requirement in extras["gpu"])


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?message}, as `docker compose config` resolves them without the variable
    set (a required one gets a stand-in)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "stand-in-token", value)


def test_compose_settings_validate_and_the_queues_fit_together() -> None:
    services = _compose()["services"]
    for name in ("web", "worker", "service"):
        env = {k: _interpolate(str(v)) for k, v in services[name]["environment"].items()}
        fields = {k.removeprefix("TUNEDECK_").lower(): v for k, v in env.items() if k.startswith("TUNEDECK_")}
        settings = Settings(**fields)  # every value (defaults included) is a valid setting
        assert settings.placement_margin_fraction >= 0
    # Web and workers share one database, broker and data directory; Flower watches that broker.
    shared = ("TUNEDECK_DATABASE_URL", "TUNEDECK_BROKER_URL", "TUNEDECK_DATA_DIR")
    for key in shared:
        assert len({services[n]["environment"][key] for n in ("web", "worker", "service")}) == 1, key
    assert f"--broker={services['web']['environment']['TUNEDECK_BROKER_URL']}" in services["flower"]["command"]
    assert services["flower"].get("profiles") == ["monitoring"]
    # Someone trains and someone answers the server's quick requests; only the trainer needs the GPU reservation.
    names = ("worker", "service", "quick")
    queues = {n: services[n]["command"][services[n]["command"].index("--queues") + 1] for n in names}
    assert queues == {"worker": "training", "service": "service", "quick": "quick"}
    for name in ("service", "quick"):
        assert "deploy" not in services[name]
        assert services[name]["volumes"] == services["worker"]["volumes"]
    # Volumes for the database, the broker's data and the shared data directory.
    assert {"pgdata", "redisdata", "data"} <= set(_compose()["volumes"])
