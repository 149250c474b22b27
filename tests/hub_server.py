"""A local stand-in for the HF hub's HTTP API, on 127.0.0.1, serving model repos from folders: the calls
`huggingface_hub` makes to list and download a repo (`/api/models/REPO/revision/REV`, `/api/models/REPO/tree/REV`,
`/REPO/resolve/REV/FILE`), with the headers it reads (commit, ETag, size). Enough for `snapshot_download` and
`hf_hub_download`, nothing more."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Hub(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _commit(self, repo: str) -> str:
        return hashlib.sha1(f"local hub {repo}".encode()).hexdigest()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _not_found(self, code: str) -> None:
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, action = "/".join(parts[2:4]), parts[4]
            if repo not in self.repos:
                return self._not_found("RepoNotFound")
            if action == "revision":
                siblings = [{"rfilename": f} for f in self._files(repo)]
                return self._json({"id": repo, "sha": self._commit(repo), "siblings": siblings, "private": False})
            if action == "tree":
                entries = []
                for name in self._files(repo):
                    data = (self.repos[repo] / name).read_bytes()
                    entries.append({"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)})
                return self._json(entries)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if repo not in self.repos:
                return self._not_found("RepoNotFound")
            file = self.repos[repo] / name
            if not file.is_file():
                return self._not_found("EntryNotFound")
            data = file.read_bytes()
            headers = {"X-Repo-Commit": self._commit(repo), "ETag": f'"{_blob_id(data)}"'}
            return self._send(200, data, headers | {"Content-Type": "application/octet-stream"})
        self._not_found("RepoNotFound")


@contextmanager
def local_hub(repos: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Serve `repos` (repo id → folder) on a free port of 127.0.0.1; yields the endpoint and the request log."""
    handler = type("Hub", (_Hub,), {"repos": dict(repos), "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
