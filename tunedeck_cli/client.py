"""A small Python client of tunedeck's REST API (httpx), for scripts and the `tunedeck sweep` command.

    from tunedeck_cli.client import TunedeckClient
    with TunedeckClient("http://127.0.0.1:8000", token=None) as client:
        sweep = client.create_sweep({"name": "ranks", "base": {...}, "grid": {"method.r": [4, 8, 16]}})
        sweep = client.wait_for_sweep(sweep["id"])
        table = client.compare(sweep_id=sweep["id"])["table"]

Nothing here imports the ML stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

FINAL_STATES = {"succeeded", "failed", "cancelled", "pruned", "finished with failures"}
DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(RuntimeError):
    """The server answered with an error; `message` is its readable explanation."""

    def __init__(self, status_code: int, message: str, payload: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.payload = payload


class Unreachable(RuntimeError):
    pass


class TunedeckClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> TunedeckClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach tunedeck at {self.url} ({exc}); is `tunedeck serve` running?") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response), _json_or_none(response))
        return response

    # -- runs --
    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/api/runs", json=spec).json())

    def get_run(self, run_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/runs/{run_id}").json())

    def wait_for_run(
        self,
        run_id: int,
        *,
        poll_seconds: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run is final; `on_update` sees each state (for a progress bar). TimeoutError past timeout."""
        return _poll(f"run {run_id}", lambda: self.get_run(run_id), "status", poll_seconds, timeout, on_update)

    # -- sweeps --
    def create_sweep(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/api/sweeps", json=request).json())

    def preview_sweep(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/api/sweeps/preview", json=request).json())

    def get_sweep(self, sweep_id: int) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/sweeps/{sweep_id}").json())

    def list_sweeps(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/sweeps").json())

    def cancel_sweep(self, sweep_id: int) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/sweeps/{sweep_id}/cancel").json())

    def wait_for_sweep(
        self,
        sweep_id: int,
        *,
        poll_seconds: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until every run of the sweep is final; `on_update` sees each state. TimeoutError past timeout."""
        return _poll(f"sweep {sweep_id}", lambda: self.get_sweep(sweep_id), "state", poll_seconds, timeout, on_update)

    # -- comparisons --
    def compare(self, run_ids: Sequence[int] = (), *, sweep_id: int | None = None, x: str = "step") -> dict[str, Any]:
        return dict(self._request("GET", "/api/compare", params=_compare_params(run_ids, sweep_id, x)).json())

    def compare_csv(self, run_ids: Sequence[int] = (), *, sweep_id: int | None = None) -> str:
        params = {**_compare_params(run_ids, sweep_id, "step"), "format": "csv"}
        return self._request("GET", "/api/compare", params=params).text


def _compare_params(run_ids: Sequence[int], sweep_id: int | None, x: str) -> dict[str, Any]:
    params: dict[str, Any] = {"x": x}
    if run_ids:
        params["run_ids"] = ",".join(str(i) for i in run_ids)
    if sweep_id is not None:
        params["sweep_id"] = sweep_id
    return params


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    payload = _json_or_none(response)
    if isinstance(payload, dict):
        if isinstance(payload.get("message"), str):
            return payload["message"]
        detail = payload.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(f"{d.get('field') or d.get('loc')}: {d.get('msg')}" for d in detail if isinstance(d, dict))
    return response.text[:500] or response.reason_phrase


def _poll(
    what: str,
    fetch: Callable[[], dict[str, Any]],
    state_key: str,
    poll_seconds: float,
    timeout: float | None,
    on_update: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """Fetch until `state_key` is final; each answer goes to `on_update`. TimeoutError past `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = fetch()
        if on_update is not None:
            on_update(current)
        if current[state_key] in FINAL_STATES:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{what} is still {current[state_key]} after {timeout:.0f} s")
        time.sleep(poll_seconds)
