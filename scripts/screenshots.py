"""Regenerate the README's screenshots from a running dashboard with headless chromium (Playwright).

    TUNEDECK_DATA_DIR=/tmp/shots .venv/bin/tunedeck demo prepare
    TUNEDECK_DATA_DIR=/tmp/shots .venv/bin/tunedeck serve --demo --port 8123 &
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8123

It waits until a LoRA demo run has finished, labels a few runs as a user would (tags, a note), waits for the demo
sweeps to end, then writes docs/screenshots/{runs,run,new-run,sweep,compare,workers}.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


def wait_for_run_to_show(url: str, run_id: int | None, timeout: float) -> dict[str, Any]:
    """The run to show, once it has succeeded: `run_id`, else a LoRA run (it shows what the dashboard is for: a
    small trainable share and an adapter), else any run. The demo's other runs may still be training."""
    deadline = time.monotonic() + timeout
    while True:
        runs = httpx.get(f"{url}/api/runs", params={"limit": 200}, timeout=10).json()["items"]
        wanted = [run for run in runs if run["id"] == run_id] if run_id is not None else runs
        lora = [run for run in wanted if run["method"] == "lora"]
        for candidates in (lora, wanted):
            done = [run for run in candidates if run["status"] == "succeeded"]
            if done:
                return min(done, key=lambda run: run["id"])
            if any(run["status"] in {"queued", "running"} for run in candidates):
                break  # the preferred kind is still coming
        else:
            raise SystemExit("no succeeded run to show")
        if time.monotonic() > deadline:
            raise SystemExit(f"no run to show after {timeout:.0f} s")
        time.sleep(2)


def wait_for_sweeps(url: str, timeout: float) -> list[dict[str, Any]]:
    """The demo sweeps, once none of their runs is queued or running (their pages then show every view)."""
    deadline = time.monotonic() + timeout
    while True:
        sweeps = httpx.get(f"{url}/api/sweeps", timeout=10).json()
        runs = httpx.get(f"{url}/api/runs", params={"limit": 200}, timeout=10).json()["items"]
        if sweeps and not any(run["status"] in {"queued", "running"} for run in runs):
            return list(sweeps)
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo sweeps had not ended after {timeout:.0f} s")
        time.sleep(3)


def label_runs(url: str, shown: dict[str, Any]) -> None:
    """Tags and a note, as a user adds them after a sweep (PATCH /api/runs/{id})."""
    runs = httpx.get(f"{url}/api/runs", params={"limit": 200}, timeout=10).json()["items"]
    for run in runs:
        tags = ["demo", run["method"].replace("_", "-")]
        if run["name"].startswith("demo ranks"):
            tags.append("rank-sweep")
        httpx.patch(f"{url}/api/runs/{run['id']}", json={"tags": tags}, timeout=10).raise_for_status()
    note = "Baseline for the rank sweep: r16 on q/v. Compare held-out BLEU with r8 before going further."
    httpx.patch(f"{url}/api/runs/{shown['id']}", json={"notes": note}, timeout=10).raise_for_status()


def wait_drawn(page: Any) -> None:
    for figure in page.locator("figure.chart").all():
        figure.and_(page.locator('[data-drawn="true"]')).wait_for(timeout=30_000)


def visit(page: Any, url: str) -> None:
    response = page.goto(url)
    if response is None or not response.ok:
        raise SystemExit(f"{url} answered {response.status if response else 'nothing'}")
    page.wait_for_load_state("networkidle")


def wait_for_estimate(page: Any, tries: int = 3) -> None:
    """Let the memory estimate (a worker's answer) settle; a worker busy with the hub defaults may miss a round."""
    for _ in range(tries):
        page.wait_for_timeout(1000)
        page.wait_for_load_state("networkidle", timeout=60_000)
        estimate = page.locator("#estimate")
        if not estimate.count() or "no worker answered" not in estimate.inner_text():
            return
        page.locator('input[name="name"]').dispatch_event("change")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--run", type=int, default=None, help="the run to show (default: a finished LoRA run)")
    parser.add_argument("--timeout", type=float, default=1800, help="how long to wait for the run to finish")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium is not installed: `make browser`")
    url = args.url.rstrip("/")
    run = wait_for_run_to_show(url, args.run, args.timeout)
    print(f"showing run {run['id']} ({run['name']})")
    sweeps = wait_for_sweeps(url, args.timeout)
    label_runs(url, run)
    by_name = {sweep["name"]: sweep for sweep in sweeps}
    ranks, methods = by_name.get("demo ranks", sweeps[0]), by_name.get("demo methods", sweeps[-1])
    args.out.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)

        visit(page, f"{url}/")
        # two runs ticked: the bulk actions (compare, tag, archive, cancel, delete) appear above the table
        boxes = page.locator('input[type="checkbox"][name="run_ids"]')
        for index in range(min(2, boxes.count())):
            boxes.nth(index).check()
        page.screenshot(path=args.out / "runs.png")

        visit(page, f"{url}/runs/new")
        # Offline, the hub defaults cannot be read: show the form as a new user fills it, with the demo sources.
        for button in ("Use the demo model", "Use the demo data"):
            if page.get_by_role("button", name=button).count():
                page.get_by_role("button", name=button).click()
        page.fill('input[name="name"]', "lora-r8")
        wait_for_estimate(page)
        page.screenshot(path=args.out / "new-run.png", full_page=True)

        visit(page, f"{url}/runs/{run['id']}")
        wait_drawn(page)
        # Down to the end of the curves: the panels below (generation, export, spec) have screenshots of their own.
        bottom = page.locator("#charts").evaluate("(el) => el.getBoundingClientRect().bottom + window.scrollY")
        clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom + 16}
        page.screenshot(path=args.out / "run.png", full_page=True, clip=clip)

        visit(page, f"{url}/sweeps/{ranks['id']}")
        wait_drawn(page)
        page.wait_for_timeout(1000)
        # The views that explain the sweep: parallel coordinates, parameter importance, the objective by trial.
        page_top = "(el) => el.getBoundingClientRect().top + window.scrollY"
        top = page.get_by_role("heading", name="Parameters and objective").evaluate(page_top)
        end = page.get_by_role("heading", name="Runs", exact=True).last.evaluate(page_top)
        clip = {"x": 0, "y": top - 16, "width": VIEWPORT["width"], "height": end - top}
        page.screenshot(path=args.out / "sweep.png", full_page=True, clip=clip)

        visit(page, f"{url}/compare?sweep_id={methods['id']}")
        wait_drawn(page)
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out / "compare.png", full_page=True)

        visit(page, f"{url}/workers")
        page.screenshot(path=args.out / "workers.png", full_page=True)
        browser.close()

    for name in ("runs.png", "new-run.png", "run.png", "sweep.png", "compare.png", "workers.png"):
        path = args.out / name
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
