"""A tiny HTTP proxy in front of moto_server that answers chosen API calls with real AWS error or
canned responses (EC2 XML, Service Quotas JSON), so boto3 parses what EC2 would send."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    action: str  # EC2 Action (RunInstances) or JSON target operation (ListServiceQuotas)
    status: int = 400
    code: str = ""  # error code; empty with a body: a canned success answer
    message: str = ""
    body: str | None = None  # full response body instead of an error document
    times: int = 1_000_000  # how many matching requests to answer before forwarding again
    delay_s: float = 0.0  # sleep before answering (time-outs)
    content_type: str = "text/xml"
    when: str | None = None  # only requests whose body contains this text (e.g. "MarketType=spot")


def ec2_error(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>11111111-2222-3333-4444-555555555555</RequestID></Response>"
    )


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:PORT of moto
    faults: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # every action, in order
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FaultProxy:
        proxy = self
        up = urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                action = target.rsplit(".", 1)[-1] if target else ""
                if not action:
                    action = urllib.parse.parse_qs(body.decode()).get("Action", [""])[0]
                proxy.seen.append(action)
                text = urllib.parse.unquote_plus(body.decode(errors="replace"))
                fault = next(
                    (
                        f
                        for f in proxy.faults
                        if f.action == action and f.times > 0 and (f.when is None or f.when in text)
                    ),
                    None,
                )
                if fault is not None:
                    fault.times -= 1
                    if fault.delay_s:
                        time.sleep(fault.delay_s)
                    payload = (
                        fault.body if fault.body is not None else ec2_error(fault.code, fault.message)
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", fault.content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(str(up.hostname), up.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection"}}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in {
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "server",
                        "date",
                    }:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client killed mid-answer (chaos tests): nothing to report

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def count(self, action: str) -> int:
        return self.seen.count(action)
