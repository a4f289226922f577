"""A real HTTP proxy on 127.0.0.1 in front of the S3 server that injects transient faults.

For paths containing a marker, the first N requests get either a genuine S3 throttling response
(503 SlowDown, XML body) or a connection dropped without a response (what a restarting server
looks like to a client). Everything else is forwarded unchanged (Host header included, so SigV4
signatures still verify). botocore's own retry logic has to absorb the faults: nothing is mocked.
"""
from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>")


class FaultyProxy:
    """rules: marker -> (kind, n) with kind "throttle" (503 SlowDown) or "reset" (dropped connection)."""

    def __init__(self, upstream: str, rules: dict[str, tuple[str, int]]):
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.rules = rules
        self.seen: Counter[str] = Counter()      # requests per path
        self.injected: Counter[str] = Counter()  # faults injected per marker
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fault_for(self, path: str) -> str | None:
        key = path.split("?", 1)[0]
        with self._lock:
            self.seen[key] += 1
            for marker, (kind, n) in self.rules.items():
                if marker in key and self.seen[key] <= n:
                    self.injected[marker] += 1
                    return kind
        return None

    def __enter__(self) -> "FaultyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _proxy(self) -> None:
        proxy: FaultyProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = proxy.fault_for(self.path)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "throttle":
            self._reply(503, "Slow Down", [("Content-Type", "application/xml")], _SLOWDOWN)
            return
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            resp = conn.getresponse()
            data = resp.read()
            headers = resp.getheaders()
        finally:
            conn.close()
        self._reply(resp.status, resp.reason, headers, data)

    def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status, reason)
        length = str(len(data))
        for k, v in headers:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # a HEAD reply describes the object, without sending it
            elif k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _proxy
