"""Datasets end to end: upload (API and limits), preview on a worker, each format trained by a real worker,
bad files refused with reasons, the Datasets pages, and "Clone run" keeping the dataset fields."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.stack import ROOT, Stack
from tests.conftest import tiny_spec
from tests.test_dataset_formats import CHAT_TEMPLATE

HISTORY_ROWS = [
    {
        "system": "You are terse.",
        "history": [["Say one.", "one"]],
        "instruction": "Say two.",
        "input": "",
        "output": "two",
    },
    *({"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(7)),
]
SHAREGPT_ROWS = [
    {"messages": [{"role": "user", "content": f"Repeat {w}."}, {"role": "assistant", "content": w}]}
    for w in ("cat", "dog", "bird", "fish", "tree", "sun", "moon", "star")
]
TRAINING = {
    "max_steps": 3,
    "batch_size": 4,
    "max_length": 64,
    "eval_steps": 3,
    "eval_generation_samples": 0,
    "learning_rate": 1e-3,
}


def _client(stack: Stack) -> httpx.Client:
    """Uploads and previews wait for a service worker, which may still be starting on a busy machine."""
    return httpx.Client(base_url=stack.base_url, timeout=360)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


def _upload(client: httpx.Client, filename: str, content: bytes, **form: str) -> httpx.Response:
    return client.post("/api/datasets", files={"file": (filename, content, "application/octet-stream")}, data=form)


def _uploads(stack: Stack) -> set[str]:
    folder = stack.data_dir / "uploads"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_upload_round_trip_preview_and_pages(sqlite_stack: Stack, tiny_assets: Any) -> None:
    content = _jsonl(HISTORY_ROWS)
    with _client(sqlite_stack) as client:
        answer = _upload(client, "../../etc/evil name.jsonl", content, format="alpaca", name="history demo")
        assert answer.status_code == 201, answer.text
        body = answer.json()
        stored = Path(body["source"])
        assert body["row_count"] == len(HISTORY_ROWS) and body["kind"] == "upload"
        assert stored.parent == (sqlite_stack.data_dir / "uploads").resolve()
        assert "evil" not in stored.name and stored.suffix == ".jsonl"
        assert stored.read_bytes() == content and body["sha256"] == hashlib.sha256(content).hexdigest()
        assert body["original_filename"] == "evil name.jsonl"
        assert body["spec"] == {"source": str(stored), "format": "alpaca"}
        assert {"instruction", "output", "history", "system"} <= set(body["columns"])

        listed = client.get("/api/datasets").json()
        assert body["id"] in [d["id"] for d in listed]
        assert client.get(f"/api/datasets/{body['id']}").json()["row_count"] == len(HISTORY_ROWS)
        assert client.get("/api/datasets/999999").status_code == 404

        model = str(tiny_assets.model_dir)
        preview = client.get(f"/api/datasets/{body['id']}/preview", params={"model": model, "max_length": 24})
        assert preview.status_code == 200, preview.text
        data = preview.json()
        first = data["samples"][0]["segments"]
        assert first[0] == {
            "text": "You are terse.\nHuman: Say one.\n\nAssistant: ",
            "learned": False,
            "tokens": first[0]["tokens"],
        }
        assert first[1]["learned"] and first[1]["text"] == "one</s>"
        lengths = [s["full_length"] for s in data["samples"]]
        assert data["lengths"]["count"] == len(HISTORY_ROWS)
        assert data["lengths"]["truncated"] == sum(b["count"] for b in data["histogram"] if b["truncated"]) >= 1
        assert sum(b["count"] for b in data["histogram"]) == len(HISTORY_ROWS)
        assert lengths[0] > 24 and data["samples"][0]["truncated"]

        chat = client.get(f"/api/datasets/{body['id']}/preview", params={"model": model, "template": "chat"})
        assert chat.status_code == 422 and "needs a chat template" in chat.json()["detail"]
        missing = client.get(
            f"/api/datasets/{body['id']}/preview", params={"model": str(sqlite_stack.data_dir / "nope")}
        )
        assert missing.status_code == 422, missing.text

        page = client.get("/datasets")
        assert page.status_code == 200 and "history demo" in page.text
        assert f'<td class="num dataset-rows">{len(HISTORY_ROWS)}</td>' in page.text
        detail = client.get(f"/datasets/{body['id']}")
        assert detail.status_code == 200 and f"/runs/new?dataset={body['id']}" in detail.text
        fragment = client.get(f"/datasets/{body['id']}/preview", params={"model": model, "max_length": 24})
        assert fragment.status_code == 200
        assert '<span class="masked">You are terse.' in fragment.text
        assert '<span class="learned">one&lt;/s&gt;</span>' in fragment.text
        assert f'<strong class="truncated-count">{data["lengths"]["truncated"]}</strong>' in fragment.text
        prefilled = client.get(f"/runs/new?dataset={body['id']}")
        assert str(stored) in prefilled.text


def test_text_datasets_preview_as_text(sqlite_stack: Stack, tiny_assets: Any) -> None:
    """Issue 16: the preview replaced the stored format with None, so a text dataset was previewed as alpaca."""
    rows = [{"text": f"the {w} is here and the {w} is there"} for w in ("cat", "dog", "bird")]
    with _client(sqlite_stack) as client:
        answer = _upload(client, "plain.jsonl", _jsonl(rows), format="text", name="plain text")
        assert answer.status_code == 201, answer.text
        dataset_id = answer.json()["id"]
        model = str(tiny_assets.model_dir)
        preview = client.get(f"/api/datasets/{dataset_id}/preview", params={"model": model, "max_length": 64})
        fragment = client.get(f"/datasets/{dataset_id}/preview", params={"model": model, "max_length": 64})
    assert preview.status_code == 200, preview.text
    samples = preview.json()["samples"]
    assert len(samples) == len(rows)
    assert "the cat is here" in "".join(segment["text"] for segment in samples[0]["segments"])
    assert fragment.status_code == 200, fragment.text
    assert "the cat is here" in fragment.text


def test_bad_uploads_are_refused_with_reasons(sqlite_stack: Stack) -> None:
    before = _uploads(sqlite_stack)
    with _client(sqlite_stack) as client:
        malformed = _upload(client, "broken.json", b'[{"instruction": "a", "output": "b"}, {"instr')
        wrong = _upload(client, "wrong.jsonl", _jsonl([{"question": "q", "reply": "r"}]))
        wrong_type = _upload(client, "notes.txt", b"hello")
        bad_mapping = _upload(client, "x.jsonl", _jsonl(SHAREGPT_ROWS), format="sharegpt", columns="instruction=q")
        bad_role = _upload(
            client, "roles.jsonl", _jsonl([{"conversations": [{"from": "robot", "value": "x"}]}]), format="sharegpt"
        )
        empty = _upload(client, "empty.jsonl", b"")
    assert malformed.status_code == 422 and "could not be read as json" in malformed.json()["detail"]
    assert "broken.json" in malformed.json()["detail"]  # the user's name, not the stored path
    assert wrong.status_code == 422
    assert "'instruction'" in wrong.json()["detail"] and "question, reply" in wrong.json()["detail"]
    assert wrong_type.status_code == 422 and ".jsonl" in wrong_type.json()["detail"]
    assert bad_mapping.status_code == 422 and "has no field 'instruction'" in bad_mapping.json()["detail"]
    assert bad_role.status_code == 422 and "role 'robot'" in bad_role.json()["detail"]
    assert empty.status_code == 422
    assert _uploads(sqlite_stack) == before, "refused uploads must not stay on disk"


@pytest.fixture(scope="module")
def small_upload_server(sqlite_stack: Stack) -> Iterator[Stack]:
    """A second server on the same data, database and broker, with a 4 KiB upload limit."""
    side = Stack(data_dir=sqlite_stack.data_dir, env={**sqlite_stack.env, "TUNEDECK_MAX_UPLOAD_BYTES": "4096"})
    try:
        side.start_server()
        yield side
    finally:
        side.stop()


def test_upload_size_limit_is_413(small_upload_server: Stack) -> None:
    before = _uploads(small_upload_server)
    with _client(small_upload_server) as client:
        too_big = _upload(client, "big.jsonl", _jsonl(SHAREGPT_ROWS * 40), format="sharegpt")
        fits = _upload(client, "small.jsonl", _jsonl(SHAREGPT_ROWS), format="sharegpt")
    assert too_big.status_code == 413, too_big.text
    assert fits.status_code == 201, fits.text
    assert _uploads(small_upload_server) == before | {Path(fits.json()["source"]).name}


@pytest.mark.timeout(1800)  # ten short runs, one after another on one training worker
def test_each_format_trains_through_the_worker(sqlite_stack: Stack, tiny_assets: Any) -> None:
    data = sqlite_stack.data_dir / "local-data"
    data.mkdir(exist_ok=True)
    text_file = data / "text.jsonl"
    text_file.write_bytes(_jsonl([{"text": f"the {w} is here and the {w} is there"} for w in ("cat", "dog") * 4]))
    mapped_file = data / "mapped.csv"
    mapped_file.write_text("prompt,answer\n" + "".join(f"Double {i}.,{2 * i}\n" for i in range(8)), encoding="utf-8")
    broken_file = data / "broken.jsonl"
    broken_file.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    chat_model = sqlite_stack.data_dir / "models" / "chat-bloom"
    if not chat_model.exists():
        shutil.copytree(tiny_assets.model_dir, chat_model)
        (chat_model / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    with _client(sqlite_stack) as client:
        history = _upload(client, "history.jsonl", _jsonl(HISTORY_ROWS)).json()["spec"]
        sharegpt = _upload(client, "chat.json", json.dumps(SHAREGPT_ROWS).encode(), format="sharegpt").json()["spec"]
        specs = {
            "alpaca-history": tiny_spec(tiny_assets, "fmt-history", dataset=history, training=TRAINING),
            "sharegpt": tiny_spec(tiny_assets, "fmt-sharegpt", dataset=sharegpt, training=TRAINING),
            "text": tiny_spec(
                tiny_assets, "fmt-text", dataset={"source": str(text_file), "format": "text"}, training=TRAINING
            ),
            "columns": tiny_spec(
                tiny_assets,
                "fmt-columns",
                dataset={"source": str(mapped_file), "columns": {"instruction": "prompt", "output": "answer"}},
                training=TRAINING,
            ),
            "chat": tiny_spec(
                tiny_assets,
                "fmt-chat",
                model=str(chat_model),
                dataset={**sharegpt, "template": "chat"},
                training=TRAINING,
            ),
            "malformed": tiny_spec(tiny_assets, "bad-file", dataset={"source": str(broken_file)}, training=TRAINING),
            "wrong-columns": tiny_spec(
                tiny_assets, "bad-columns", dataset={"source": str(text_file)}, training=TRAINING
            ),
            "chat-without-template": tiny_spec(
                tiny_assets, "bad-template", dataset={**sharegpt, "template": "chat"}, training=TRAINING
            ),
            "report-to-tensorboard": tiny_spec(
                tiny_assets, "report-tb", dataset=history, training={**TRAINING, "report_to": ["tensorboard"]}
            ),
            "report-to-missing": tiny_spec(
                tiny_assets, "bad-report", dataset=history, training={**TRAINING, "report_to": ["wandb"]}
            ),
        }
        ids = {}
        for key, spec in specs.items():
            created = client.post("/api/runs", json=spec)
            assert created.status_code == 201, (key, created.text)
            ids[key] = created.json()["id"]
    # `tunedeck wait` follows runs with progress bars; its exit status says whether all succeeded.
    good = [str(ids[key]) for key in ("alpaca-history", "sharegpt", "text", "columns", "chat")]
    waited = _tunedeck_wait(sqlite_stack, good)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stderr.count("3/3") == len(good) and waited.stderr.count(": succeeded") == len(good)
    waited = _tunedeck_wait(sqlite_stack, [str(ids["malformed"])])
    assert waited.returncode == 1 and "could not be read as json" in waited.stderr
    runs = {key: sqlite_stack.wait_for_run(run_id, timeout=420) for key, run_id in ids.items()}

    for key in ("alpaca-history", "sharegpt", "text", "columns", "chat"):
        run = runs[key]
        assert run["status"] == "succeeded", (key, run["error"])
        assert run["step"] == 3
        assert run["details"]["dataset"]["format"] == specs[key]["dataset"].get("format", "alpaca")
    assert runs["chat"]["details"]["dataset"]["template"] == "chat"
    tensorboard = runs["report-to-tensorboard"]
    assert tensorboard["status"] == "succeeded", tensorboard["error"]
    events = list((sqlite_stack.data_dir / "runs" / f"run-{tensorboard['id']}" / "tensorboard").glob("events.out.*"))
    assert events and events[0].stat().st_size > 0, "training.report_to=tensorboard wrote no event file"

    failed = {key: runs[key] for key in ("malformed", "wrong-columns", "chat-without-template", "report-to-missing")}
    assert all(run["status"] == "failed" for run in failed.values()), {k: r["status"] for k, r in failed.items()}
    assert "could not be read as json" in failed["malformed"]["error"]
    assert (
        "'instruction'" in failed["wrong-columns"]["error"]
        and "Columns found: text" in failed["wrong-columns"]["error"]
    )
    assert "needs a chat template" in failed["chat-without-template"]["error"]
    assert "pip install wandb" in failed["report-to-missing"]["error"]

    # The environment each run records, and the hashes of its spec and data.
    text_run = runs["text"]
    environment = text_run["details"]["environment"]
    assert environment["packages"]["torch"] and environment["packages"]["transformers"]
    assert environment["python"] and "gpus" in environment
    assert text_run["details"]["seed"] == 42
    assert text_run["details"]["spec_hash"] == text_run["spec_hash"]
    assert text_run["details"]["dataset"]["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert text_run["details"]["dataset"]["rows"] == 8

    # Files that runs trained on are registered on the Datasets page (after the run).
    with _client(sqlite_stack) as client:
        registered = {d["source"]: d for d in client.get("/api/datasets").json()}
    assert registered[str(text_file)]["row_count"] == 8 and registered[str(text_file)]["format"] == "text"
    assert registered[str(mapped_file)]["column_mapping"] == {"instruction": "prompt", "output": "answer"}


def _tunedeck_wait(stack: Stack, run_ids: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunedeck_cli.main", "wait", *run_ids, "--url", stack.base_url, "--poll", "0.5"],
        cwd=ROOT,
        env={**stack.env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=900,
    )


class _FormValues(HTMLParser):
    """The values a browser would post for the form with id `run-form`."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("name"):
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.values[a["name"]] = "on"
            else:
                self.values[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_clone_run_keeps_the_dataset_fields(sqlite_stack: Stack, tiny_assets: Any) -> None:
    dataset = {
        "source": str(tiny_assets.dataset_path),
        "format": "alpaca",
        "columns": {"instruction": "instruction", "output": "output"},
        "template": "course",
        "split": "train[:50]",
        "max_samples": 20,
    }
    spec = tiny_spec(tiny_assets, "clone-me", dataset=dataset, training={**TRAINING, "report_to": []})
    with _client(sqlite_stack) as client:
        original = client.post("/api/runs", json=spec).json()
        client.post(f"/api/runs/{original['id']}/cancel")
        page = client.get(f"/runs/new?clone={original['id']}")
        assert page.status_code == 200
        parser = _FormValues()
        parser.feed(page.text)
        form = parser.values
        assert form["dataset.columns"] == "instruction=instruction, output=output"
        assert form["dataset.split"] == "train[:50]" and form["dataset.template"] == "course"
        posted = client.post("/runs", data=form, follow_redirects=False)
        assert posted.status_code == 303, posted.text
        clone_id = int(posted.headers["location"].rsplit("/", 1)[1])
        client.post(f"/api/runs/{clone_id}/cancel")
        clone = client.get(f"/api/runs/{clone_id}").json()
    assert clone["spec"]["dataset"] == original["spec"]["dataset"]
    assert clone["spec"]["name"] == "clone-me-copy"
