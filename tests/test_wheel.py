"""tunedeck is a real package: the built wheel, installed into a fresh venv without the ML extra, serves the
dashboard and migrates an empty database, with no checkout in sight."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.stack import ROOT, free_port, stack_env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with nothing but the wheel and its (web) dependencies."""
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("tunedeck-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    return venv


def test_wheel_carries_templates_migrations_and_alembic_config(installed: Path) -> None:
    code = (
        "import app.web.templating as t, tunedeck_state.migrate as m, pathlib, importlib.util\n"
        "print(t.TEMPLATES_DIR.is_relative_to(pathlib.Path(t.__file__).parents[1]))\n"
        "print((pathlib.Path(m.__file__).parent / 'migrations' / 'env.py').is_file())\n"
        "print((pathlib.Path(m.__file__).parent / 'alembic.ini').is_file())\n"
        "print(importlib.util.find_spec('torch') is None)\n"
    )
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd="/", capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "True", "True"], out.stdout + out.stderr


def test_installed_wheel_serves_the_dashboard_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    server = subprocess.Popen(
        [str(installed / "bin" / "tunedeck"), "serve", "--no-worker", "--port", str(port)],
        cwd=tmp_path,
        env=stack_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        page = _get_when_up(f"http://127.0.0.1:{port}/", server)
        assert page.status_code == 200 and "<title>Runs · tunedeck" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/static/app.css").status_code == 200
        runs = httpx.get(f"http://127.0.0.1:{port}/api/runs")
        assert runs.status_code == 200 and runs.json()["total"] == 0
        assert (data_dir / "tunedeck.sqlite").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get_when_up(url: str, server: subprocess.Popen[bytes], seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read().decode() if server.stdout else ""
            raise AssertionError(f"the installed server exited with {server.returncode}:\n{output[-3000:]}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"the installed server did not answer {url} within {seconds:.0f} s")
