"""A webhook receiver on loopback for the alert tests (tests/test_alerts.py, tests/test_ui.py)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Records every POST by path; `fail[path]` = how many of the next POSTs answer 500 (-1: all)."""

    def __init__(self) -> None:
        self.posts: dict[str, list[dict]] = {}
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.posts.setdefault(self.path, []).append(
                        {"body": body, "idempotency_key": self.headers.get("Idempotency-Key")})
                    left = receiver.fail.get(self.path, 0)
                    if left > 0:
                        receiver.fail[self.path] = left - 1
                status = 500 if left != 0 else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status == 500 else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return list(self.posts.get(path, []))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
