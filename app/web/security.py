"""Who may talk to tunedeck, and from where.

* `bind_refusal`: `tunedeck serve` refuses a non-loopback address unless TUNEDECK_API_TOKEN is set.
* `SecurityMiddleware`, for every request:
  1. without a token (loopback use) only loopback Host headers are answered, so a web page whose domain is
     re-pointed at 127.0.0.1 (DNS rebinding) gets nothing;
  2. a state-changing request (POST, PUT, PATCH, DELETE) that a browser sent from another site is refused
     (Origin, else Sec-Fetch-Site, else Referer must name this host): a page you visit cannot launch runs;
  3. with a token, everything but /login, /static, and /api/health needs `Authorization: Bearer <token>` or
     the signed session cookie that /login sets (the pages' own fetches of /api use the cookie).
* `/login` and `/logout`: a form that takes the token and sets the session cookie (Starlette's
  SessionMiddleware, signed with itsdangerous under a key derived from the token: changing the token logs
  everyone out). Each login has a random session id; logout revokes it server-side (`SessionRevocations`).
* GETs: the API (and /metrics, /openapi.json) refuses cross-site reads like posts; a page opens from another
  site only as a followed link, never embedded or fetched. Every answer forbids framing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from tunedeck_state.settings import Settings, get_settings

MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "tunedeck_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths anyone may reach when a token is set: the login form, static files, the liveness probe.
OPEN_PATHS = frozenset({"/login", "/api/health", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
#: Paths answered as an API (401 JSON) rather than as a page (redirect to /login).
API_PREFIXES = ("/api/", "/openapi.json")
LOGIN_FAILURE_DELAY_SECONDS = 0.5


# -- start-up --------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, token: str | None) -> str | None:
    """Why `tunedeck serve` must not listen on `host` with this token, or None when it may."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"TUNEDECK_API_TOKEN is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH}, for example "
            "the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if is_loopback(host) or token:
        return None
    return (
        f"refusing to listen on {host}: every machine that can reach it could launch trainings on this "
        "machine's GPUs and read its runs. Set TUNEDECK_API_TOKEN to a long random secret (API calls then "
        "need 'Authorization: Bearer <token>' and pages a login), or listen on 127.0.0.1 (the default) and "
        "reach it through an SSH tunnel."
    )


# -- request checks --------------------------------------------------------------------------------------


def _host_and_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return netloc.lower(), None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    return (parts.hostname or "").lower(), port or default


def cross_site_problem(headers: Headers, scheme: str) -> str | None:
    """Why a state-changing request looks like it came from another site's page, or None."""
    host = headers.get("host", "")
    origin = headers.get("origin")
    if origin is not None:
        if origin.strip().lower() == "null":
            return "a request from an opaque origin (Origin: null) cannot change anything"
        origin_parts = urlsplit(origin)
        origin_scheme = origin_parts.scheme or scheme
        if _host_and_port(origin_parts.netloc, origin_scheme) != _host_and_port(host, origin_scheme):
            return f"cross-site request refused: Origin {origin} is not this site ({host})"
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    referer = headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        if _host_and_port(parts.netloc, parts.scheme or scheme) != _host_and_port(host, parts.scheme or scheme):
            return f"cross-site request refused: Referer {parts.scheme}://{parts.netloc} is not this site ({host})"
    return None


#: GETs answered as data (and built at a cost: exports zip whole models, previews and compare ask workers or read
#: every metric): a browser's cross-site request for one (an <img> or <script> tag on any page) is refused.
COSTLY_GET_PREFIXES = ("/api/", "/openapi.json", "/metrics")


def cross_site_read_problem(path: str, headers: Headers, scheme: str) -> str | None:
    """Why a GET/HEAD looks like another site's page fetching from tunedeck, or None.

    The API (exports, previews, comparisons, every JSON read) refuses any cross-site sign, as state-changing
    requests do. A page may still be opened from a link on another site (a top-level navigation: Sec-Fetch-Mode
    navigate, destination document), but not embedded or fetched by one."""
    if path.startswith(COSTLY_GET_PREFIXES):
        return cross_site_problem(headers, scheme)
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        navigation = headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") in (None, "document")
        if not navigation:
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site}, not a link followed to a page)"
    if headers.get("origin") is not None:  # navigations never send an Origin with a GET; fetch() and XHR do
        return cross_site_problem(headers, scheme)
    return None


#: Sent with every answer: no page of tunedeck may be framed by another (clickjacking the Cancel button).
FRAME_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))


class SessionRevocations:
    """Logged-out sessions, so that logout ends a session at once (its signed cookie is otherwise valid until it
    expires). Each login gets a random session id in its cookie; logout records the id until the cookie would have
    expired anyway. Kept in a small JSON file in the data directory, re-read when it changes: a revocation holds
    across restarts and for every server process on that directory. (A new token ends every session by itself:
    the cookies' signing key is derived from the token.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}
        self._seen: tuple[int, int] | None = None

    def _reload(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._revoked, self._seen = {}, None
            return
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            self._revoked = {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            return  # half-written by another process: keep what we had, read it again next time
        self._seen = seen

    def is_revoked(self, session_id: str) -> bool:
        with self._lock:
            self._reload()
            return session_id in self._revoked

    def revoke(self, session_id: str, until: float) -> None:
        with self._lock:
            self._reload()
            now = time.time()
            self._revoked = {sid: end for sid, end in self._revoked.items() if end > now}
            self._revoked[session_id] = until
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(self._revoked), encoding="utf-8")
            os.replace(partial, self.path)
            self._seen = None


_revocations: SessionRevocations | None = None


def revocations() -> SessionRevocations:
    global _revocations
    path = get_settings().resolved_data_dir / "web" / "revoked-sessions.json"
    if _revocations is None or _revocations.path != path:
        _revocations = SessionRevocations(path)
    return _revocations


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(b"tunedeck-login\x00" + token.encode()).hexdigest()[:32]


def session_secret(token: str) -> str:
    return hmac.new(token.encode(), b"tunedeck-session-v1", hashlib.sha256).hexdigest()


def bearer_matches(authorization: str | None, token: str) -> bool:
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def safe_next(target: str | None) -> str:
    """A local path to go back to after login; anything else (another site, //host, \\host) becomes "/"."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return "/"
    if any(ord(ch) < 32 for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


class SecurityMiddleware:
    """Host check (no token), cross-site refusal (always), authentication (with a token). Pure ASGI."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        response = self.refusal(connection)
        if response is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await response(scope, receive, _with_frame_headers(send))
            return
        await self.app(scope, receive, _with_frame_headers(send) if scope["type"] == "http" else send)

    def refusal(self, connection: HTTPConnection) -> Response | None:
        headers = connection.headers
        scheme = connection.url.scheme
        if not self.token and not self._host_allowed(headers.get("host", "")):
            return _error(
                connection,
                status.HTTP_400_BAD_REQUEST,
                f"Host {headers.get('host')!r} is not answered: without TUNEDECK_API_TOKEN tunedeck answers only "
                "loopback names (localhost, 127.0.0.1, [::1]); add names to TUNEDECK_ALLOWED_HOSTS",
            )
        method = connection.scope.get("method", "GET")
        if method in UNSAFE_METHODS or connection.scope["type"] == "websocket":
            problem = cross_site_problem(headers, scheme)
            if problem:
                return _error(connection, status.HTTP_403_FORBIDDEN, problem)
        elif method in ("GET", "HEAD"):
            problem = cross_site_read_problem(connection.url.path, headers, scheme)
            if problem:
                return _error(connection, status.HTTP_403_FORBIDDEN, problem)
        if self.token and not self._is_open(connection.url.path) and not self._authenticated(connection):
            return self._challenge(connection)
        return None

    def _host_allowed(self, host_header: str) -> bool:
        if not host_header:
            return True  # not a browser (every browser sends Host), so not DNS rebinding
        hostname, _ = _host_and_port(host_header, "http")
        return is_loopback(hostname) or hostname in self.allowed_hosts

    @staticmethod
    def _is_open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _authenticated(self, connection: HTTPConnection) -> bool:
        assert self.token is not None
        if bearer_matches(connection.headers.get("authorization"), self.token):
            return True
        session: dict[str, Any] = connection.scope.get("session") or {}
        if not hmac.compare_digest(str(session.get("auth", "")), token_fingerprint(self.token)):
            return False
        session_id = session.get("sid")  # a cookie without one predates revocable sessions: log in again
        return isinstance(session_id, str) and bool(session_id) and not revocations().is_revoked(session_id)

    def _challenge(self, connection: HTTPConnection) -> Response:
        path = connection.url.path
        if path.startswith(API_PREFIXES):
            return JSONResponse(
                {"detail": "authentication required: send the header 'Authorization: Bearer <TUNEDECK_API_TOKEN>'"},
                status_code=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="tunedeck"'},
            )
        target = path + (f"?{connection.url.query}" if connection.url.query else "")
        login = f"/login?next={quote(target, safe='')}"
        if connection.headers.get("hx-request") == "true":
            return Response(status_code=status.HTTP_401_UNAUTHORIZED, headers={"HX-Redirect": "/login"})
        return RedirectResponse(login, status_code=status.HTTP_303_SEE_OTHER)


def _with_frame_headers(send: Send) -> Send:
    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(name, value) for name, value in FRAME_HEADERS if name not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _error(connection: HTTPConnection, code: int, message: str) -> Response:
    if connection.url.path.startswith(API_PREFIXES) or "html" not in connection.headers.get("accept", ""):
        return JSONResponse({"detail": message}, status_code=code)
    return HTMLResponse(f"<h1>{code}</h1><p>{_escape(message)}</p>", status_code=code)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# -- login pages -----------------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _login_page(request: Request, next_path: str, error: str | None = None, code: int = 200) -> Response:
    from app.web.templating import templates

    context = {"next": safe_next(next_path), "error": error, "token_required": bool(get_settings().api_token)}
    return templates.TemplateResponse(request, "login.html", context, status_code=code)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next_path: Annotated[str, Query(alias="next", max_length=2000)] = "/") -> Response:
    if not get_settings().api_token:
        return RedirectResponse(safe_next(next_path), status_code=status.HTTP_303_SEE_OTHER)
    return _login_page(request, next_path)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    token = get_settings().api_token
    form = await request.form(max_fields=10, max_files=0)
    next_path = safe_next(str(form.get("next") or "/"))
    if not token:
        return RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    given = str(form.get("token") or "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        await asyncio.sleep(LOGIN_FAILURE_DELAY_SECONDS)  # slows guessing; the token is long anyway
        return _login_page(request, next_path, "That is not the token this server was started with.", 401)
    request.session.clear()
    request.session["auth"] = token_fingerprint(token)
    request.session["sid"] = secrets.token_urlsafe(18)
    request.session["iat"] = int(time.time())
    return RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)


@router.post("/logout")
def logout(request: Request) -> Response:
    """End this session: its id is revoked on the server, so a copy of the cookie no longer works either."""
    if "session" in request.scope:
        session_id = request.session.get("sid")
        if isinstance(session_id, str) and session_id:
            # Every copy of the cookie was signed before now, so none outlives now + max age: forget it then.
            revocations().revoke(session_id, time.time() + get_settings().session_max_age_seconds)
        request.session.clear()
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


# -- wiring ----------------------------------------------------------------------------------------------


def install(app: FastAPI, settings: Settings | None = None) -> None:
    """Add the login routes, the checks and (with a token) the session cookie and the OpenAPI bearer scheme."""
    settings = settings or get_settings()
    app.include_router(router)
    allowed = frozenset(h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip())
    app.add_middleware(SecurityMiddleware, token=settings.api_token, allowed_hosts=allowed)
    if settings.api_token:
        # Added after, so it runs first: the security middleware reads scope["session"].
        app.add_middleware(
            SessionMiddleware,
            secret_key=session_secret(settings.api_token),
            session_cookie=SESSION_COOKIE,
            max_age=settings.session_max_age_seconds,
            same_site="lax",
            https_only=settings.secure_cookies,
        )
        _document_bearer(app)


def _document_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI schema, so /docs offers 'Authorize' and clients know."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "TUNEDECK_API_TOKEN",
        }
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
