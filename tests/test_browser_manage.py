"""Managing runs in a real browser (chromium through Playwright): edit name, tags and notes in place on the run page,
tick runs in the list then tag and archive them, and delete a run after its confirmation dialog."""

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
