"""A small local stand-in for the Hugging Face hub's upload API (the real hub is unreachable in tests).

It answers what `huggingface_hub.HfApi.create_repo` and `create_commit` call: repo creation, README
validation, the preupload check (every file "regular", so contents travel inline in the commit) and the
commit itself, and keeps what it received. A request without the expected bearer token gets a 401.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubStandIn:
    token: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: every Authorization header seen
    authorizations: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                auth = self.headers.get("Authorization", "")
                hub.authorizations.append(auth)
                if auth != f"Bearer {hub.token}":
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
                    payload = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    hub.repos.setdefault(repo_id, {"files": {}, "commits": [], "create": data})
                    self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                elif path == "/api/validate-yaml":
                    self._json(200, {"errors": [], "warnings": []})
                elif "/preupload/" in path:
                    files = json.loads(body)["files"]
                    self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                elif "/commit/" in path:
                    repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
                    repo = hub.repos.get(repo_id)
                    if repo is None:
                        self._json(404, {"error": f"repository {repo_id} not found"})
                        return
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    for line in lines:
                        if line["key"] == "file":
                            repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    oid = f"{len(repo['commits']) + 1:040x}"
                    repo["commits"].append(lines[0]["value"])
                    self._json(
                        200,
                        {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
                    )
                else:
                    self._json(404, {"error": f"no route {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
