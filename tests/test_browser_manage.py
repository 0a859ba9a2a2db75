"""Managing runs and sweeps in a real browser (chromium through Playwright): edit name, tags and notes in place on
the sweep page and the run page, archive and restore a sweep, tick runs in the list then tag and archive them, and
delete a run after its confirmation dialog."""

from __future__ import annotations

from typing import Any

import pytest

from harness.stack import Stack
from tests.conftest import tiny_spec

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_browser")]


@pytest.fixture(scope="module")
def runs(sqlite_stack: Stack, tiny_assets: Any) -> list[dict[str, Any]]:
    training = {"max_steps": 2, "eval_steps": 2, "eval_generation_samples": 0}
    return [
        sqlite_stack.train(tiny_spec(tiny_assets, f"browser-manage-{i}", training={**training, "seed": 40 + i}))
        for i in range(2)
    ]


def test_sweep_page_edits_labels_in_place_and_archives(
    sqlite_stack: Stack, runs: list[dict[str, Any]], browser_page: Any
) -> None:
    page, base = browser_page, sqlite_stack.base_url
    spec = {k: v for k, v in runs[0]["spec"].items() if k != "name"}
    seeds = [run["spec"]["training"]["seed"] for run in runs]
    with sqlite_stack.client() as client:
        created = client.post(
            "/api/sweeps", json={"name": "browser-sweep", "base": spec, "grid": {"training.seed": seeds}}
        )
        assert created.status_code == 201, created.text
        sweep_id = created.json()["id"]
        assert all(r["reused"] for r in created.json()["runs"])  # nothing trains: both runs exist
        assert created.json()["device_hours"] == 0  # their device time is their own sweep's (none), not this one's
    page.goto(f"{base}/sweeps/{sweep_id}")
    assert page.locator("#sweep-tags").inner_text() == "no tags"
    page.click("#sweep-labels-edit")
    assert page.locator("#sweep-labels-form input[name=name]").input_value() == "browser-sweep"
    page.fill("#sweep-labels-form input[name=name]", "browser-sweep renamed")
    page.fill("#sweep-labels-form input[name=tags]", "bad tag!")
    page.click("#sweep-labels-save")
    page.locator('#sweep-labels .field-error[data-field="tags"]').wait_for()
    assert page.locator("#sweep-labels-form input[name=name]").input_value() == "browser-sweep renamed"  # kept
    page.fill("#sweep-labels-form input[name=tags]", "sw-a, sw-b")
    page.fill("#sweep-labels-form textarea[name=notes]", "<i>not italic</i> & kept")
    page.click("#sweep-labels-save")
    page.locator("#sweep-labels-edit").wait_for()
    assert page.locator("#sweep-tags a.tag").all_inner_texts() == ["sw-a", "sw-b"]
    assert page.locator("h1 #sweep-name").inner_text() == "browser-sweep renamed"  # the heading too, no reload
    assert page.locator("#sweep-notes").inner_text() == "<i>not italic</i> & kept"
    assert page.locator("#sweep-notes i").count() == 0
    assert page.locator("#sweep-live tbody tr").count() == 2  # the rest of the page is untouched
    with sqlite_stack.client() as client:
        stored = client.get(f"/api/sweeps/{sweep_id}").json()
    assert (stored["name"], stored["tags"], stored["notes"]) == (
        "browser-sweep renamed",
        ["sw-a", "sw-b"],
        "<i>not italic</i> & kept",
    )

    page.click("#sweep-tags a.tag >> text=sw-a")
    page.wait_for_url(f"{base}/sweeps?archived=any&tag=sw-a")
    assert page.locator("#sweeps-table tbody tr").count() == 1
    assert page.locator("#sweeps-table tbody tr a", has_text="browser-sweep renamed").count() == 1

    page.goto(f"{base}/sweeps/{sweep_id}")
    page.click("#sweep-archive")
    page.locator("#sweep-labels[data-archived=true] .badge-archived").wait_for()
    assert page.locator("#sweep-archive").inner_text() == "Restore"
    with sqlite_stack.client() as client:
        assert client.get(f"/api/sweeps/{sweep_id}").json()["archived"] is True
        assert sweep_id not in [s["id"] for s in client.get("/api/sweeps").json()]
    page.goto(f"{base}/sweeps")
    assert page.locator("#sweeps-table a", has_text="browser-sweep renamed").count() == 0
    page.goto(f"{base}/sweeps/{sweep_id}")
    page.click("#sweep-archive")
    page.locator("#sweep-labels[data-archived=false]").wait_for()
    with sqlite_stack.client() as client:
        assert client.get(f"/api/sweeps/{sweep_id}").json()["archived"] is False


def test_edit_in_place_bulk_tag_archive_and_delete(
    sqlite_stack: Stack, runs: list[dict[str, Any]], browser_page: Any
) -> None:
    page, base = browser_page, sqlite_stack.base_url
    first, second = runs
    page.goto(f"{base}/runs/{first['id']}")
    page.click("#labels-edit")
    page.fill("#labels-form input[name=name]", "browser-manage-renamed")
    page.fill("#labels-form input[name=tags]", "bad tag!")
    page.click("#labels-save")
    page.locator('.field-error[data-field="tags"]').wait_for()
    page.fill("#labels-form input[name=tags]", "web-a, web-b")
    page.fill("#labels-form textarea[name=notes]", "<b>not bold</b>")
    page.click("#labels-save")
    page.locator("#labels-edit").wait_for()
    assert page.locator("#run-tags a.tag").all_inner_texts() == ["web-a", "web-b"]
    assert page.locator("h1 #run-name").inner_text() == "browser-manage-renamed"
    assert page.locator("#run-notes").inner_text() == "<b>not bold</b>"
    assert page.locator("#run-notes b").count() == 0

    page.goto(f"{base}/?name=browser-manage")
    for run in runs:
        page.check(f"#pick-{run['id']}")
    page.fill("#bulk-tags", "bulk1")
    page.click("#bulk-tag")
    page.locator("#bulk-message").wait_for()
    assert page.locator("#runs-table a.tag", has_text="bulk1").count() == 2
    page.click("#bulk-archive")
    page.locator("#bulk-message", has_text="archived").wait_for()
    assert page.locator(f"#pick-{first['id']}").count() == 0 and page.locator(f"#pick-{second['id']}").count() == 0
    page.goto(f"{base}/?tag=bulk1&archived=yes")
    assert page.locator("#runs-table tbody tr").count() == 2

    page.goto(f"{base}/runs/{second['id']}")
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.click("#run-delete")
    page.wait_for_url(f"{base}/?deleted=1")
    assert messages and f"Delete run #{second['id']}" in messages[0]
    with sqlite_stack.client() as client:
        assert client.get(f"/api/runs/{second['id']}").status_code == 404
        assert client.get(f"/api/runs/{first['id']}").json()["archived"] is True
