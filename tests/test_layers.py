"""The architecture's import rules, checked on every module's imports (function-local ones included, those under
`if TYPE_CHECKING:` not) and, for the web process, on what a real import loads.

    tunedeck_cli ─▶ app ─┐
                 └▶ worker ─▶ tunedeck_jobs ─▶ tunedeck_state ─▶ runspec
    app ─▶ tunedeck_jobs        worker.training ─▶ runspec (and the ML stack)

app/ and worker/ never import each other; no cycle anywhere (docs/architecture.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from harness.stack import ROOT

PROJECT = ("app", "worker", "runspec", "tunedeck_state", "tunedeck_jobs", "tunedeck_cli", "tunedeck_demo", "harness")
ML_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "tokenizers", "liger_kernel")
WEB_MODULES = ("fastapi", "starlette", "jinja2", "jinja2_fragments", "uvicorn")
QUEUE_MODULES = ("celery", "kombu", "billiard")
DB_MODULES = ("sqlalchemy", "alembic", "psycopg")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    found = {}
    for top in (*PROJECT, "tests", "bench", "scripts"):
        for path in (ROOT / top).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str) -> str:
    """The project module `name` refers to (its most specific existing prefix), or the top-level name outside it."""
    modules = project_modules()
    candidate = name
    while candidate and candidate not in modules:
        candidate = candidate.rpartition(".")[0]
    return candidate or name.split(".")[0]


@cache
def imports_of(module: str) -> frozenset[str]:
    path = project_modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}")
                found.add(target if target.startswith(base) and target != base.split(".")[0] else _resolve(base))
    found.discard(module)
    return frozenset(found)


def modules_under(*prefixes: str) -> Iterator[str]:
    for module in sorted(project_modules()):
        if module.split(".")[0] in ("tests", "bench", "scripts"):
            continue
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            yield module


def _offending(prefixes: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for module in modules_under(*prefixes):
        for target in imports_of(module):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} imports {target}")
    return bad


def test_app_and_worker_never_import_each_other() -> None:
    assert _offending(("app",), ("worker", "tunedeck_cli", "tunedeck_demo", "harness")) == []
    assert _offending(("worker",), ("app", "tunedeck_cli", "tunedeck_demo", "harness")) == []


def test_training_imports_only_the_ml_stack_and_the_run_spec() -> None:
    outside = ("app", "tunedeck_state", "tunedeck_jobs", "tunedeck_cli", "tunedeck_demo", "harness")
    assert _offending(("worker.training",), (*outside, *WEB_MODULES, *QUEUE_MODULES, *DB_MODULES)) == []
    others = [m for m in modules_under("worker") if not m.startswith("worker.training")]
    assert [f"{m} imports {t}" for m in modules_under("worker.training") for t in imports_of(m) if t in others] == []


def test_training_modules_import_each_other_at_the_top() -> None:
    """A function-local import inside worker/training would be a cycle in hiding."""
    hidden = []
    for module in modules_under("worker.training"):
        tree = ast.parse(project_modules()[module].read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("worker")):
                    hidden.append(f"{module}:{node.lineno} imports {node.module} inside {function.name}()")
    assert hidden == []


def test_the_seam_and_the_state_sit_below_web_and_worker() -> None:
    assert _offending(("tunedeck_jobs",), ("app", "worker", "tunedeck_cli", *ML_MODULES, *WEB_MODULES)) == []
    state_forbidden = ("app", "worker", "tunedeck_jobs", "tunedeck_cli", *ML_MODULES, *WEB_MODULES, *QUEUE_MODULES)
    assert _offending(("tunedeck_state",), state_forbidden) == []
    assert _offending(("runspec",), tuple(p for p in PROJECT if p != "runspec")) == []
    assert _offending(("runspec",), (*WEB_MODULES, *QUEUE_MODULES, *DB_MODULES)) == []


def test_run_spec_builds_peft_models_only_inside_functions() -> None:
    """A method module declares how its peft model is built, run on a worker: the ML stack is imported in that
    function, never when the spec is imported (the web process validates specs)."""
    bad = []
    for module in modules_under("runspec"):
        tree = ast.parse(project_modules()[module].read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            bad += [f"{module} imports {n}" for n in names if n.split(".")[0] in ML_MODULES]
    assert bad == []


def test_bench_does_not_import_tests() -> None:
    bench = [m for m in project_modules() if m.startswith("bench")]
    assert [f"{m} imports {t}" for m in bench for t in imports_of(m) if t.split(".")[0] == "tests"] == []


def test_no_import_cycles() -> None:
    graph = {m: {t for t in imports_of(m) if t in project_modules()} for m in modules_under(*PROJECT)}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_web_process_imports_no_ml_stack() -> None:
    code = (
        "import sys\n"
        "from app.web.app import create_app\n"
        "create_app()\n"
        "import app.services.submit, tunedeck_cli.main, tunedeck_jobs.celery_app, tunedeck_jobs.dispatch, runspec\n"
        f"print([m for m in {ML_MODULES!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_routes_leave_transactions_and_sessions_to_services_and_deps() -> None:
    """Routes never commit (the service layer owns each unit of work); sessions come from app/web/deps.py only."""
    found = []
    for path in sorted((ROOT / "app" / "web").rglob("*.py")):
        text = path.read_text()
        if ".commit(" in text:
            found.append(f"{path.name} commits")
        if path.name != "deps.py" and ("Annotated[Session" in text or "Depends(get_session)" in text):
            found.append(f"{path.name} declares its own session dependency")
    assert found == []


def test_every_route_module_follows_the_router_convention() -> None:
    """app/web/routes/<feature>.py declares api_router and page_router, and the package mounts every feature."""
    from app.web import routes

    modules = {p.stem for p in (ROOT / "app" / "web" / "routes").glob("*.py") if p.stem != "__init__"}
    mounted = {feature.__name__.rsplit(".", 1)[-1] for feature in routes.FEATURES}
    assert mounted == modules, f"mount every feature in app/web/routes/__init__.py: {sorted(modules ^ mounted)}"
    for feature in routes.FEATURES:
        assert not feature.api_router.prefix, f"{feature.__name__}: /api is the package's prefix, not the module's"
