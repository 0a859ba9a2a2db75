"""Build step: the repository's top-level templates/ and migrations/ (and alembic.ini) go into the wheel as package
data of the packages that read them (app/templates, tunedeck_state/migrations), so an installed tunedeck serves
pages and migrates a database without the checkout. Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: (folder or file in the checkout, where it lands inside the built packages)
PACKAGE_DATA = (
    ("templates", "app/templates"),
    ("migrations", "tunedeck_state/migrations"),
    ("alembic.ini", "tunedeck_state/alembic.ini"),
)


class build_py_with_data(build_py):
    def run(self) -> None:
        super().run()
        for source, target in PACKAGE_DATA:
            origin, destination = ROOT / source, Path(self.build_lib) / target
            if origin.is_dir():
                shutil.copytree(origin, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination)


setup(cmdclass={"build_py": build_py_with_data})
