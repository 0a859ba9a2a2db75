"""The architecture's import rules, checked: the web process never imports the ML stack."""

from __future__ import annotations

import subprocess
import sys

from harness.stack import ROOT

ML_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate")


def test_web_app_and_services_import_no_ml_stack() -> None:
    code = (
        "import sys\n"
        "from app.web.app import create_app\n"
        "create_app()\n"
        "import tunedeck_state.runs, app.services.submit, tunedeck_cli.main, tunedeck_jobs.celery_app, runspec\n"
        f"print([m for m in {ML_MODULES!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_training_code_imports_neither_web_nor_database() -> None:
    code = (
        "import sys\n"
        "import worker.training.run, worker.training.inspect\n"
        "web = ('app.', 'sqlalchemy', 'fastapi', 'celery')\n"
        "print(sorted(m for m in sys.modules if m == 'app' or m.startswith(web)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
