"""Reading the dashboard's HTML in tests: whole pages and the htmx fragments the pages swap in."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from bs4 import BeautifulSoup, Tag

ACTIVE_STATUSES = ("queued", "running")


def parse(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


def fragment_root(html: str) -> Tag:
    """The single top-level element of an htmx fragment (fails if the response is a whole page)."""
    assert "<html" not in html and "<header" not in html, "expected a fragment, got a whole page"
    roots = [node for node in parse(html).contents if isinstance(node, Tag)]
    assert len(roots) == 1, f"a fragment has one root element, got {[r.name for r in roots]}"
    return roots[0]


def controls(root: Tag) -> dict[str, Tag]:
    """Form controls by name: input, select, textarea."""
    found: dict[str, Tag] = {}
    for element in root.find_all(["input", "select", "textarea"]):
        name = element.get("name")
        if name:
            found[str(name)] = element
    return found


def control_value(element: Tag) -> str:
    if element.name == "select":
        selected = element.find("option", selected=True) or element.find("option")
        return str(selected.get("value", "")) if selected else ""
    if element.get("type") == "checkbox":
        return "on" if element.has_attr("checked") else ""
    return str(element.get("value", ""))


def facts(root: Tag) -> dict[str, str]:
    """The run page's facts list: {term: text}."""
    dl = root.find("dl", class_="facts")
    assert dl is not None, "no facts list"
    return {dt.get_text(" ", strip=True): dt.find_next_sibling("dd").get_text(" ", strip=True) for dt in dl("dt")}


def field_error(root: Tag, name: str) -> str | None:
    """The error text shown next to the form control `name`, or None when it is not marked as wrong."""
    control = root.find(attrs={"name": name})
    assert control is not None, f"no control named {name!r}"
    label = control.find_parent("label")
    if label is None or "has-error" not in (label.get("class") or []):
        return None
    error = label.find(class_="error")
    return error.get_text(" ", strip=True) if error else ""


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 180, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def wait_for_running(client: httpx.Client, run_id: int, min_step: int = 1, timeout: float = 240) -> dict[str, Any]:
    """Wait until the run trains (at least `min_step` steps done); fails if it ends first."""

    def check() -> dict[str, Any] | None:
        run = client.get(f"/api/runs/{run_id}").json()
        assert run["status"] in ACTIVE_STATUSES, f"run {run_id} ended before training: {run['status']} {run['error']}"
        return run if run["status"] == "running" and run["step"] >= min_step else None

    return wait_until(check, f"run {run_id} to reach step {min_step}", timeout)


def wait_until_idle(client: httpx.Client, timeout: float = 300) -> None:
    """Wait until no run of the stack is queued or running."""

    def idle() -> bool:
        return all(client.get("/api/runs", params={"status": s}).json()["total"] == 0 for s in ACTIVE_STATUSES)

    wait_until(idle, "every run of the stack to finish", timeout, interval=1)
