"""Nobody gets in uninvited: bind refusal, token and login, cross-site refusal, DNS rebinding, custom code,
pickled weights, data roots, safe paths. Each promise of SECURITY.md is a test here (run: pytest -m security)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.web.security import (
    SESSION_COOKIE,
    bind_refusal,
    cross_site_problem,
    cross_site_read_problem,
    is_loopback,
    safe_next,
)
from harness.stack import ROOT, Stack, free_port, stack_env
from runspec.sources import SourcePolicy, SourceRefused, parse_remote_code_allowlist
from tests.conftest import tiny_spec

pytestmark = pytest.mark.security

TOKEN = "test-token-0123456789-abcdefghij"
EVIL = "http://evil.example"


def _total(client: httpx.Client) -> int:
    return int(client.get("/api/runs", params={"limit": 1}).json()["total"])


# -- fixture folders -------------------------------------------------------------------------------------


def custom_code_model(tiny_assets: Any, folder: Path, marker: Path, where: str = "config.json") -> Path:
    """A copy of the tiny model whose config asks transformers to import code that would write `marker`."""
    shutil.copytree(tiny_assets.model_dir, folder)
    (folder / "evil_code.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class EvilConfig(PretrainedConfig):\n"
        "    model_type = 'tunedeck-evil'\n"
    )
    config_file = folder / where
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoTokenizer": [None, "evil_code.EvilConfig"]}
    if where == "config.json":
        config["model_type"] = "tunedeck-evil"  # only the custom code knows this architecture
    config_file.write_text(json.dumps(config))
    return folder


class _WritesMarker:
    """Unpickling this runs code: what a pickled .bin/.pt weights file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickle ran')",))


def pickled_weights_model(tiny_assets: Any, folder: Path, marker: Path) -> Path:
    """The tiny model with its safetensors weights replaced by a pickle that would write `marker`."""
    shutil.copytree(tiny_assets.model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _WritesMarker(marker)}))
    return folder


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A folder outside every data root of the test stacks (not under the data dirs, not under the repo)."""
    folder = Path(tempfile.mkdtemp(prefix="tunedeck-outside-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- start-up: binding -----------------------------------------------------------------------------------


def test_bind_refusal_rules() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and bind_refusal(host, None) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        message = bind_refusal(host, None)
        assert message and "TUNEDECK_API_TOKEN" in message, host
        assert bind_refusal(host, TOKEN) is None
    short = bind_refusal("0.0.0.0", "short")
    assert short and "at least 16" in short


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        ([], {"TUNEDECK_HOST": "0.0.0.0"}),
        (["--host", "0.0.0.0"], {"TUNEDECK_API_TOKEN": "too-short"}),
    ],
    ids=["flag", "env", "short-token"],
)
def test_serve_refuses_public_address_without_a_token(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "tunedeck_cli.main", "serve", "--no-worker", "--port", str(port), *args],
        cwd=ROOT,
        env={**stack_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "TUNEDECK_API_TOKEN" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the refused server listened anyway"
    assert not (tmp_path / "tunedeck.sqlite").exists(), "refused before touching the database"


# -- a stack with a token (and a worker whose data roots are narrower than the server's) -----------------


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Any) -> Iterator[Stack]:
    """`serve` with TUNEDECK_API_TOKEN; its data roots include an extra folder the worker's roots do not."""
    data_dir = tmp_path_factory.mktemp("secured-stack")
    server_only = tmp_path_factory.mktemp("server-only-root")
    env = stack_env(data_dir, TUNEDECK_API_TOKEN=TOKEN, TUNEDECK_DATA_ROOTS=f"{ROOT}:{server_only}")
    stack = Stack(data_dir=data_dir, env=env)
    try:
        stack.start_server()
        stack.start_worker("training", TUNEDECK_DATA_ROOTS=str(ROOT))
        yield stack
    finally:
        stack.stop()


def _server_only_root(stack: Stack) -> Path:
    return Path(stack.env["TUNEDECK_DATA_ROOTS"].split(":")[1])


def _authed(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})


def _anonymous(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=30, follow_redirects=False)


def _login(stack: Stack, client: httpx.Client, next_path: str = "/") -> httpx.Response:
    return client.post("/login", data={"token": TOKEN, "next": next_path})


def test_api_needs_the_bearer_token(secured_stack: Stack, tiny_assets: Any) -> None:
    calls = [
        ("GET", "/api/runs", None),
        ("GET", "/api/runs/1", None),
        ("GET", "/api/runs/1/metrics", None),
        ("GET", "/api/runs/1/logs", None),
        ("POST", "/api/runs/1/cancel", None),
        ("GET", "/api/methods", None),
        ("GET", "/openapi.json", None),
        ("POST", "/api/runs", tiny_spec(tiny_assets, "no-token")),
        ("POST", "/api/models/inspect", {"model": str(tiny_assets.model_dir)}),
    ]
    with _authed(secured_stack) as authed:
        before = _total(authed)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}):
        with _anonymous(secured_stack) as client:
            for method, path, body in calls:
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                assert "Authorization: Bearer" in answer.json()["detail"]
    with _anonymous(secured_stack) as client:
        assert client.get("/api/health").status_code == 200  # the liveness probe stays open (SECURITY.md)
        assert client.get("/static/app.css").status_code == 200
    with _authed(secured_stack) as authed:
        assert _total(authed) == before, "a refused call queued a run"
        assert authed.get("/api/runs").status_code == 200
        assert authed.get("/api/methods").status_code == 200
        schema = authed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/runs"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/api/health"]["get"]


def test_pages_need_a_login_that_sets_a_session_cookie(secured_stack: Stack) -> None:
    with _anonymous(secured_stack) as client:
        for path in ("/", "/runs/new", "/runs/1", "/docs"):
            answer = client.get(path)
            assert answer.status_code == 303, (path, answer.status_code)
            assert answer.headers["location"].startswith("/login?next=")
        fragment = client.get("/runs/table", headers={"HX-Request": "true"})
        assert fragment.status_code == 401 and fragment.headers["hx-redirect"] == "/login"
        form = client.get("/login")
        assert form.status_code == 200 and 'name="token"' in form.text

        wrong = client.post("/login", data={"token": "not-the-token-at-all", "next": "/"})
        assert wrong.status_code == 401 and "not the token" in wrong.text
        assert SESSION_COOKIE not in wrong.cookies

        ok = _login(secured_stack, client, "/runs/new")
        assert ok.status_code == 303 and ok.headers["location"] == "/runs/new"
        cookie = ok.headers["set-cookie"].lower()
        assert SESSION_COOKIE in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert client.get("/").status_code == 200
        assert client.get("/runs/new").status_code == 200
        assert client.get("/api/runs").status_code == 200, "the pages' own fetches of /api use the cookie"

        client.post("/logout")
        assert client.get("/").status_code == 303


def test_login_goes_back_only_to_local_pages(secured_stack: Stack) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        with _anonymous(secured_stack) as client:
            answer = _login(secured_stack, client, target)
            assert answer.status_code == 303 and answer.headers["location"] == "/", target
    assert safe_next("/runs/3?tab=logs") == "/runs/3?tab=logs"


def test_a_cookie_signed_for_another_token_is_refused(secured_stack: Stack) -> None:
    from base64 import b64encode

    import itsdangerous

    from app.web.security import session_secret, token_fingerprint

    forged_payload = b64encode(json.dumps({"auth": token_fingerprint(TOKEN)}).encode())
    forged = itsdangerous.TimestampSigner(session_secret("another-token-0123456789")).sign(forged_payload).decode()
    with _anonymous(secured_stack) as client:
        client.cookies.set(SESSION_COOKIE, forged)
        assert client.get("/").status_code == 303
        assert client.get("/api/runs").status_code == 401


def test_logout_ends_that_session_on_the_server(secured_stack: Stack) -> None:
    """Issue 16: logout only cleared the browser's cookie; a copy of it kept working for 12 h. Now logout revokes
    that session's id on the server (also for a second server process on the same data), and other sessions go on."""
    with _anonymous(secured_stack) as first, _anonymous(secured_stack) as second:
        assert _login(secured_stack, first).status_code == 303
        assert _login(secured_stack, second).status_code == 303
        copied = first.cookies[SESSION_COOKIE]
        assert first.get("/api/runs").status_code == 200 and second.get("/api/runs").status_code == 200
        assert first.post("/logout").status_code == 303
        with _anonymous(secured_stack) as thief:
            thief.cookies.set(SESSION_COOKIE, copied)
            assert thief.get("/api/runs").status_code == 401, "the logged-out cookie still works"
            assert thief.get("/").status_code == 303
        assert second.get("/api/runs").status_code == 200, "logout ended another session too"
        other_server = Stack(data_dir=secured_stack.data_dir, env=secured_stack.env)
        try:
            other_server.start_server()
            with _anonymous(other_server) as thief:
                thief.cookies.set(SESSION_COOKIE, copied)
                assert thief.get("/api/runs").status_code == 401, "revoked on one server, live on another"
            with _anonymous(other_server) as still:
                still.cookies.set(SESSION_COOKIE, second.cookies[SESSION_COOKIE])
                assert still.get("/api/runs").status_code == 200
        finally:
            other_server.stop()


def test_a_new_token_ends_every_session(secured_stack: Stack) -> None:
    """The cookies' key is derived from the token: a server started with a new token accepts no earlier login."""
    with _anonymous(secured_stack) as client:
        assert _login(secured_stack, client).status_code == 303
        cookie = client.cookies[SESSION_COOKIE]
    env = {**secured_stack.env, "TUNEDECK_API_TOKEN": "a-brand-new-token-0123456789"}
    renewed = Stack(data_dir=secured_stack.data_dir, env=env)
    try:
        renewed.start_server()
        with _anonymous(renewed) as client:
            client.cookies.set(SESSION_COOKIE, cookie)
            assert client.get("/api/runs").status_code == 401
    finally:
        renewed.stop()


def test_logged_in_form_posts_from_other_sites_are_refused(secured_stack: Stack) -> None:
    with _anonymous(secured_stack) as client:
        _login(secured_stack, client)
        before = client.get("/api/runs").json()["total"]
        form = {"name": "csrf", "model": "org/model", "dataset.source": "org/data", "method.name": "lora"}
        for headers in (
            {"Origin": EVIL},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Referer": f"{EVIL}/page"},
        ):
            answer = client.post("/runs", data=form, headers=headers)
            assert answer.status_code == 403, (headers, answer.status_code)
            assert "cross-site" in answer.text or "opaque origin" in answer.text
            assert client.post("/api/runs/1/cancel", headers=headers).status_code == 403
        assert client.get("/api/runs").json()["total"] == before
        # the same post from this site's own page passes the check (then fails validation: no real model)
        same_site = {"Origin": secured_stack.base_url, "Sec-Fetch-Site": "same-origin"}
        answer = client.post("/runs", data={**form, "training.learning_rate": "-1"}, headers=same_site)
        assert answer.status_code == 422, answer.text
        assert client.post("/login", data={"token": TOKEN}, headers={"Origin": EVIL}).status_code == 403


def test_worker_checks_data_roots_again(secured_stack: Stack, tiny_assets: Any) -> None:
    """The server's roots include a folder the worker's do not: the web accepts, the worker refuses to read."""
    dataset = _server_only_root(secured_stack) / "elsewhere.jsonl"
    shutil.copyfile(tiny_assets.dataset_path, dataset)
    spec = tiny_spec(tiny_assets, "roots-on-worker", dataset={"source": str(dataset)}, training={"max_steps": 1})
    with _authed(secured_stack) as client:
        answer = client.post("/api/runs", json=spec)
    assert answer.status_code == 201, answer.text
    run = _wait(secured_stack, answer.json()["id"])
    assert run["status"] == "failed"
    assert "dataset.source" in run["error"] and "outside the data roots" in run["error"], run["error"]


def test_pickled_weights_are_never_unpickled(secured_stack: Stack, tiny_assets: Any) -> None:
    marker = secured_stack.data_dir / "pickle-ran.txt"
    folder = pickled_weights_model(tiny_assets, secured_stack.data_dir / "pickled-model", marker)
    pickle.loads((folder / "pytorch_model.bin").read_bytes())  # the fixture is live: unpickling runs its code
    assert marker.exists(), "the fixture's pickle did not run code when unpickled"
    marker.unlink()

    spec = tiny_spec(tiny_assets, "pickled", model=str(folder), training={"max_steps": 1})
    with _authed(secured_stack) as client:
        answer = client.post("/api/runs", json=spec)
    assert answer.status_code == 201, answer.text
    run = _wait(secured_stack, answer.json()["id"])
    assert run["status"] == "failed"
    assert "safetensors" in run["error"], run["error"]
    assert not marker.exists(), "tunedeck unpickled a user's weights file"


def _wait(stack: Stack, run_id: int, timeout: float = 240) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    with _authed(stack) as client:
        while time.monotonic() < deadline:
            run = client.get(f"/api/runs/{run_id}").json()
            if run["status"] in {"succeeded", "failed", "cancelled"}:
                return dict(run)
            time.sleep(0.5)
    raise TimeoutError(f"run {run_id} did not finish")


# -- the default loopback stack: no token, but neither DNS rebinding nor cross-site posts get in ----------


def test_unknown_host_names_are_not_answered_without_a_token(sqlite_stack: Stack) -> None:
    with sqlite_stack.client() as client:
        for host in ("evil.example", f"evil.example:{sqlite_stack.port}", "192.168.1.5"):
            answer = client.get("/api/runs", headers={"Host": host})
            assert answer.status_code == 400 and "TUNEDECK_ALLOWED_HOSTS" in answer.text, host
        for host in (f"localhost:{sqlite_stack.port}", f"127.0.0.1:{sqlite_stack.port}", f"[::1]:{sqlite_stack.port}"):
            assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host


def test_cross_site_posts_cannot_launch_runs_on_localhost(sqlite_stack: Stack, tiny_assets: Any) -> None:
    spec = tiny_spec(tiny_assets, "cross-site", training={"max_steps": 1})
    with sqlite_stack.client() as client:
        before = _total(client)
        for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            assert client.post("/api/runs", json=spec, headers=headers).status_code == 403
            form = {"name": "x", "model": spec["model"], "dataset.source": spec["dataset"]["source"]}
            assert client.post("/runs", data=form, headers=headers).status_code == 403
            answer = client.post(
                "/api/runs", content=json.dumps(spec), headers={**headers, "Content-Type": "text/plain"}
            )
            assert answer.status_code == 403
        assert _total(client) == before
        own = client.post("/api/runs", json={**spec, "name": ""}, headers={"Origin": sqlite_stack.base_url})
        assert own.status_code == 422, "a same-origin post is not refused as cross-site"


def test_costly_reads_are_refused_cross_site_and_pages_cannot_be_framed(sqlite_stack: Stack) -> None:
    """Issue 16: in no-token mode any page could make the browser GET exports, previews and comparisons (an <img>
    tag); now the API refuses every cross-site read, a page opens only as a followed link, and no page can be
    framed (clickjacking a Cancel button)."""
    image = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    frame = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    with sqlite_stack.client() as client:
        for url in ("/api/runs", "/api/runs/1/export/adapter", "/api/datasets/1/preview?model=x", "/metrics"):
            for headers in (image, link, {"Origin": EVIL}, {"Referer": f"{EVIL}/page"}):
                answer = client.get(url, headers=headers)
                assert answer.status_code == 403 and "cross-site" in answer.text, (url, headers, answer.text)
        for url in ("/runs/new", "/datasets/1/preview?model=x", "/runs/table"):
            assert client.get(url, headers=image).status_code == 403, url
            assert client.get(url, headers=frame).status_code == 403, url
            assert client.get(url, headers={"Origin": EVIL}).status_code == 403, url
        assert client.get("/runs/new", headers=link).status_code == 200, "a link from another site opens the page"
        assert client.get("/api/runs", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert client.get("/api/runs", headers={"Origin": sqlite_stack.base_url}).status_code == 200
        assert client.get("/api/runs").status_code == 200, "scripts send no browser headers and are not affected"
        page = client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"


# -- custom code -----------------------------------------------------------------------------------------


def test_custom_code_fixture_is_live(tiny_assets: Any, tmp_path: Path) -> None:
    """With trust_remote_code=True transformers would run the fixture's code: the refusal below is real."""
    marker = tmp_path / "ran.txt"
    folder = custom_code_model(tiny_assets, tmp_path / "evil-model", marker)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    assert marker.read_text() == "custom code ran"


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_model_folder_asking_for_custom_code_is_refused(sqlite_stack: Stack, tiny_assets: Any, where: str) -> None:
    marker = sqlite_stack.data_dir / f"custom-code-ran-{where}.txt"
    folder = custom_code_model(tiny_assets, sqlite_stack.data_dir / f"evil-{where}", marker, where)
    with sqlite_stack.client() as client:
        before = _total(client)
        answer = client.post("/api/runs", json=tiny_spec(tiny_assets, "evil", model=str(folder)))
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["detail"]
        assert error["field"] == "model" and "auto_map" in error["msg"] and "ALLOWLIST" in error["msg"]
        inspect = client.post("/api/models/inspect", json={"model": str(folder)})
        assert inspect.status_code == 422 and "auto_map" in inspect.text
        assert _total(client) == before
    assert not marker.exists()


def test_worker_refuses_custom_code_itself(tiny_assets: Any, tmp_path: Path) -> None:
    """The worker's own check (should a folder change after submission): nothing of the folder's code runs."""
    from runspec import RunSpec
    from worker.training import loading as sources
    from worker.training.errors import TrainingError
    from worker.training.loading import load_base_model, load_tokenizer
    from worker.training.model_inspect import inspect_model

    marker = tmp_path / "ran.txt"
    folder = custom_code_model(tiny_assets, tmp_path / "evil-model", marker)
    spec = RunSpec.model_validate(tiny_spec(tiny_assets, "evil", model=str(folder)))
    sources.set_policy(SourcePolicy(data_roots=(tmp_path, ROOT)))
    try:
        for load in (
            lambda: load_tokenizer(str(folder)),
            lambda: load_base_model(spec),
            lambda: inspect_model(str(folder)),
        ):
            with pytest.raises(TrainingError, match="auto_map"):
                load()
    finally:
        sources.set_policy(SourcePolicy.default())
    assert not marker.exists()


def test_remote_code_only_for_allow_listed_hub_ids_at_a_pinned_commit() -> None:
    from tunedeck_state.settings import Settings
    from worker.training.loading import model_load_kwargs

    commit = "0123456789abcdef0123456789abcdef01234567"
    policy = SourcePolicy(data_roots=(ROOT,), remote_code=parse_remote_code_allowlist(f"org/custom@{commit}"))
    allowed = policy.resolve_model("org/custom")
    assert allowed.trust_remote_code and allowed.revision == commit
    assert model_load_kwargs(allowed) == {"trust_remote_code": True, "revision": commit, "use_safetensors": True}
    other = policy.resolve_model("org/other")
    assert model_load_kwargs(other) == {"trust_remote_code": False, "use_safetensors": True}
    for entry in ("org/custom", "org/custom@main", "org/custom@v1.0", "https://x@" + commit):
        with pytest.raises(ValueError, match="allowlist"):
            Settings(remote_code_allowlist=entry)


def test_a_hub_model_that_needs_its_own_code_fails_with_the_way_out() -> None:
    """transformers refuses such a model (trust_remote_code=False); the run's reason says what to do instead."""
    from worker.training.loading import model_load_error

    refusal = ValueError("The repository org/x contains custom code which must be executed ... trust_remote_code=True")
    message = model_load_error("org/x", refusal)
    assert "TUNEDECK_REMOTE_CODE_ALLOWLIST" in message and "trust_remote_code=True" not in message


# -- data roots and URLs ---------------------------------------------------------------------------------


def test_links_out_of_the_data_roots_are_refused(sqlite_stack: Stack, tiny_assets: Any, outside_dir: Path) -> None:
    secret = outside_dir / "secret.jsonl"
    shutil.copyfile(tiny_assets.dataset_path, secret)
    link = sqlite_stack.data_dir / "innocent.jsonl"
    link.symlink_to(secret)
    model = sqlite_stack.data_dir / "linked-model"
    shutil.copytree(tiny_assets.model_dir, model)
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(secret)
    with sqlite_stack.client() as client:
        before = _total(client)
        for spec, field in (
            (tiny_spec(tiny_assets, "link", dataset={"source": str(link)}), "dataset.source"),
            (tiny_spec(tiny_assets, "link", dataset={"source": str(secret)}), "dataset.source"),
            (tiny_spec(tiny_assets, "link", model=str(model)), "model"),
            (tiny_spec(tiny_assets, "link", model=str(outside_dir)), "model"),
        ):
            answer = client.post("/api/runs", json=spec)
            assert answer.status_code == 422, answer.text
            fields = {e["field"]: e["msg"] for e in answer.json()["detail"]}
            assert field in fields and "outside the data roots" in fields[field], fields
        assert _total(client) == before


def test_worker_refuses_paths_outside_its_roots_in_process(tiny_assets: Any, outside_dir: Path) -> None:
    from runspec import DatasetSpec
    from worker.training import loading as sources
    from worker.training.data import load_rows
    from worker.training.errors import TrainingError

    secret = outside_dir / "secret.jsonl"
    shutil.copyfile(tiny_assets.dataset_path, secret)
    sources.set_policy(SourcePolicy(data_roots=(ROOT,)))
    try:
        with pytest.raises(TrainingError, match="outside the data roots"):
            load_rows(DatasetSpec(source=str(secret)))
        with pytest.raises(TrainingError, match="is a URL"):
            load_rows(DatasetSpec(source="https://example.com/data.jsonl"))
    finally:
        sources.set_policy(SourcePolicy.default())


@pytest.mark.parametrize(
    "source",
    [
        "https://huggingface.co/gpt2",
        "http://127.0.0.1:9/model",
        "hf://datasets/org/name",
        "file:///etc/passwd",
        "s3://bucket/key",
        "ftp://example.com/x",
    ],
)
def test_url_sources_are_refused(source: str) -> None:
    policy = SourcePolicy(data_roots=(ROOT,))
    for resolve in (policy.resolve_model, policy.resolve_dataset):
        with pytest.raises(SourceRefused, match="is a URL"):
            resolve(source)


def test_hub_ids_and_local_paths_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text("{}\n")
    policy = SourcePolicy(data_roots=(tmp_path,), base_dir=tmp_path)
    assert policy.resolve_dataset("org/name").kind == "hub"
    assert policy.resolve_dataset("data.jsonl").location == str(tmp_path / "data.jsonl")
    for bad in ("..\\x", "a/*.jsonl", "%2e%2e%2fx", "x.zip", "../data.jsonl"):
        with pytest.raises(SourceRefused):
            policy.resolve_dataset(bad)


# -- safe paths (artifact downloads, uploads) ------------------------------------------------------------


def test_safe_join_and_run_artifacts_stay_inside(tmp_path: Path, outside_dir: Path) -> None:
    from tunedeck_state.paths import PathOutside, run_artifact, run_dir, safe_join
    from tunedeck_state.settings import Settings

    settings = Settings(data_dir=tmp_path)
    folder = run_dir(settings, 7)
    folder.mkdir(parents=True)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "escape").symlink_to(outside_dir)
    assert run_artifact(settings, 7, "adapter/adapter_config.json") == folder / "adapter" / "adapter_config.json"
    for bad in ("../run-8/x", "/etc/passwd", "adapter/../../run-8", "escape/x", "a\\..\\..\\x", "x\x00", "", "."):
        with pytest.raises(PathOutside):
            run_artifact(settings, 7, bad)
    for bad_id in (0, -1, True):
        with pytest.raises(PathOutside):
            run_dir(settings, bad_id)
    assert safe_join(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()


def _zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, data)
    return path


def test_zip_extraction_refuses_links_and_escapes(tmp_path: Path) -> None:
    from tunedeck_state.paths import PathOutside, extract_zip

    cases = {
        "symlink": _zip_with(tmp_path / "link.zip", "data.jsonl", b"/etc/passwd", symlink=True),
        "climb": _zip_with(tmp_path / "climb.zip", "../escaped.jsonl"),
        "absolute": _zip_with(tmp_path / "abs.zip", "/tmp/escaped.jsonl"),
    }
    for name, archive in cases.items():
        destination = tmp_path / f"out-{name}"
        with pytest.raises(PathOutside):
            extract_zip(archive, destination)
        assert not any(destination.rglob("*")), name
    assert not (tmp_path / "escaped.jsonl").exists()
    good = _zip_with(tmp_path / "good.zip", "sub/data.jsonl", b'{"a": 1}\n')
    (written,) = extract_zip(good, tmp_path / "out-good")
    assert written.read_bytes() == b'{"a": 1}\n'


def test_cross_site_rules() -> None:
    from starlette.datastructures import Headers

    def problem(**headers: str) -> str | None:
        return cross_site_problem(Headers({"host": "127.0.0.1:8000", **headers}), "http")

    assert problem() is None  # curl, scripts: no browser headers
    assert problem(origin="http://127.0.0.1:8000") is None
    assert problem(origin="http://localhost:8000")  # another origin, even if the same machine
    assert problem(origin="http://127.0.0.1:9000")
    assert problem(origin="null")
    assert problem(**{"sec-fetch-site": "same-origin"}) is None
    assert problem(**{"sec-fetch-site": "cross-site"})
    assert problem(referer="http://127.0.0.1:8000/runs/new") is None
    assert problem(referer="http://evil.example/")
    assert (
        cross_site_problem(Headers({"host": "tunedeck.example", "origin": "https://tunedeck.example"}), "http") is None
    )

    def read_problem(path: str, **headers: str) -> str | None:
        return cross_site_read_problem(path, Headers({"host": "127.0.0.1:8000", **headers}), "http")

    cross = {"sec-fetch-site": "cross-site"}
    assert read_problem("/api/runs/1/export/model", **cross, **{"sec-fetch-mode": "no-cors"})
    assert read_problem("/api/runs", **cross, **{"sec-fetch-mode": "navigate", "sec-fetch-dest": "document"})
    assert read_problem("/runs/1", **cross, **{"sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}) is None
    assert read_problem("/runs/1", **cross, **{"sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe"})
    assert read_problem("/runs/1", referer="http://evil.example/") is None  # a followed link (older browsers)
    assert read_problem("/api/runs", referer="http://evil.example/")
    assert read_problem("/api/runs") is None and read_problem("/runs/1") is None


# -- a real browser: login, then an htmx post passes the cross-site check -----------------------------------


@pytest.mark.browser
def test_browser_logs_in_and_posts_the_form(secured_stack: Stack, browser_page: Any) -> None:
    page = browser_page
    page.goto(f"{secured_stack.base_url}/runs/new")
    assert page.url.startswith(f"{secured_stack.base_url}/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{secured_stack.base_url}/runs/new")
    page.fill("input[name=name]", "from-the-browser")
    page.fill("input[name=model]", "https://evil.example/model")
    with page.expect_response(lambda r: r.url.endswith("/runs") and r.request.method == "POST") as posted:
        page.click("#run-form button[type=submit]")
    assert posted.value.status == 422, "the browser's own htmx post was refused as cross-site"
    page.wait_for_selector(".form-errors")
    assert "is a URL" in page.inner_text(".form-errors")
