"""A tiny threaded JSON-over-HTTP server with regex routes, the base of the fake cloud APIs."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]  # first value of each query parameter
    multi_params: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Handler = Callable[[Request, re.Match[str]], Reply]


class JsonHttpServer:
    """Routes (method, path regex) to handlers; counts requests per route name; runs in a thread."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self.calls: Counter[str] = Counter()
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, pattern: str, name: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"/?$"), name, handler))

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One buffered write per reply and no Nagle: otherwise every call waits ~40 ms for an ACK.
            wbufsize = -1
            disable_nagle_algorithm = True

            def _dispatch(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                multi = parse_qs(parts.query, keep_blank_values=True)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    params={k: v[0] for k, v in multi.items()},
                    multi_params=multi,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply: Reply = (404, {"error": {"code": 404, "message": f"no route {parts.path}"}})
                for method, pattern, name, handler in outer._routes:
                    match = pattern.match(parts.path)
                    if method == self.command and match:
                        with outer.lock:
                            outer.calls[name] += 1
                            reply = handler(request, match)
                        break
                status, payload = reply[0], reply[1]
                extra = reply[2] if len(reply) == 3 else {}
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
