"""The architecture's import rules, checked: the web process never imports the ML stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.stack import ROOT

ML_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate")


def test_web_app_and_services_import_no_ml_stack() -> None:
    code = (
        "import sys\n"
        "from app.web.app import create_app\n"
        "create_app()\n"
        "import app.services.runs, app.services.dispatch, app.cli, worker.celery_app, runspec\n"
        f"print([m for m in {ML_MODULES!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_training_code_imports_neither_web_nor_database() -> None:
    code = (
        "import sys\n"
        "import worker.training.loop, worker.training.model_inspect\n"
        "import worker.training.generate, worker.training.preview\n"
        "web = ('app.', 'sqlalchemy', 'fastapi', 'celery')\n"
        "print(sorted(m for m in sys.modules if m == 'app' or m.startswith(web)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_worker_imports_have_no_cycle() -> None:
    """Every import inside worker/, function-local ones included (`if TYPE_CHECKING:` ones are not run)."""
    graph = {module: {target for target, _ in _imports(path) if target in MODULES} for module, path in MODULES.items()}
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_training_code_imports_only_the_ml_stack_runspec_and_itself() -> None:
    """Read, not run: worker/training imports no app, no demo builder, no database or web library, and
    no module of its own from inside a function (which would hide a cycle)."""
    forbidden = {"app", "tunedeck_demo", "sqlalchemy", "celery", "fastapi", "kombu", "starlette"}
    found = []
    for module, path in MODULES.items():
        if not module.startswith("worker.training"):
            continue
        for target, local in _imports(path):
            own = target == "worker.training" or target.startswith("worker.training.")
            outside = target.split(".")[0] in forbidden or (target.split(".")[0] == "worker" and not own)
            if outside or (own and local):
                found.append(f"{module} imports {target}" + (" inside a function" if local else ""))
    assert found == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted((ROOT / "worker").rglob("*.py"))}


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, whether the import is inside a function) for every import `path` runs."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (found for child in node.orelse for found in visit(child, local))
            return
        if isinstance(node, ast.Import):
            yield from ((alias.name, local) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            yield base, local
            # `from package import module` imports the module too
            yield from ((f"{base}.{alias.name}", local) for alias in node.names if f"{base}.{alias.name}" in MODULES)
        inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(encoding="utf-8")), False)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (its modules, the first repeated at the end), or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := walk(target)):
                return found
        state[module] = "done"
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state and (found := walk(module)):
            return found
    return []
