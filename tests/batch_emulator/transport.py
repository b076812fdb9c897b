"""The emulator at azure-core's transport seam, and as a loopback HTTP server.

`EmulatorTransport` is an azure-core HttpTransport: give it to any client (`transport=`) and every
request goes to the emulator in-process, through the SDK's real pipeline (serialization, shared-key
signing, retries, paging, error mapping, pollers). Its `sleep` (used by the retry policy for
back-off and Retry-After) is recorded and scaled, so tests see the waits without waiting.
`LoopbackServer` answers the same requests over HTTP on 127.0.0.1, for clients using a real
socket transport.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.utils import CaseInsensitiveDict

from .wire import Request, Response

CHUNK = 64 * 1024


class ConnectionLost(Exception):
    """The service acted but its answer never reached the client."""


class ConnectionRefused(Exception):
    """The request never reached the service."""


class Backend(Protocol):
    latency: float

    def dispatch(self, request: Request) -> Response: ...

    def record_sleep(self, seconds: float) -> float: ...


class EmulatorResponse(HttpResponse):
    """An azure.core.rest.HttpResponse whose body is already in memory."""

    def __init__(self, request: HttpRequest, response: Response) -> None:
        self._request = request
        self._status = response.status
        self._reason = response.reason
        self._headers: CaseInsensitiveDict = CaseInsensitiveDict(response.headers)
        self._content = response.body
        self._encoding: str | None = None
        self._closed = False
        self._consumed = False

    @property
    def request(self) -> HttpRequest:
        return self._request

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def headers(self) -> CaseInsensitiveDict:
        return self._headers

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def content_type(self) -> str | None:
        value = self._headers.get("Content-Type")
        return None if value is None else str(value)

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_stream_consumed(self) -> bool:
        return self._consumed

    @property
    def encoding(self) -> str | None:
        return self._encoding

    @encoding.setter
    def encoding(self, value: str | None) -> None:
        self._encoding = value

    @property
    def url(self) -> str:
        return self._request.url

    @property
    def content(self) -> bytes:
        return self._content

    def text(self, encoding: str | None = None) -> str:
        return self._content.decode(encoding or self._encoding or "utf-8-sig")

    def json(self) -> Any:
        return json.loads(self.text())

    def raise_for_status(self) -> None:
        if self._status >= 400:
            raise HttpResponseError(response=self)

    def __enter__(self) -> EmulatorResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def read(self) -> bytes:
        self._consumed = True
        return self._content

    def iter_raw(self, **kwargs: Any) -> Iterator[bytes]:
        self._consumed = True
        for start in range(0, len(self._content), CHUNK):
            yield self._content[start : start + CHUNK]
        self.close()

    def iter_bytes(self, **kwargs: Any) -> Iterator[bytes]:
        return self.iter_raw(**kwargs)


class EmulatorTransport(HttpTransport[HttpRequest, HttpResponse]):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __enter__(self) -> EmulatorTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def sleep(self, duration: float) -> None:
        time.sleep(self._backend.record_sleep(duration))

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        if self._backend.latency:
            time.sleep(self._backend.latency)
        body = request.content
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif body is None:
            body = b""
        elif not isinstance(body, bytes):
            raise TypeError(f"the Batch emulator's transport cannot send a {type(body).__name__} body")
        wire = Request(request.method, request.url, dict(request.headers), body)
        try:
            response = self._backend.dispatch(wire)
        except ConnectionLost as e:
            raise ServiceResponseError(str(e)) from None
        except ConnectionRefused as e:
            raise ServiceRequestError(str(e)) from None
        return EmulatorResponse(request, response)


class LoopbackServer:
    """The emulator over HTTP on 127.0.0.1 (a free port), each request on its own thread."""

    def __init__(self, backend: Backend) -> None:
        handler = _handler_class(backend)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="batch-emulator-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_class(backend: Backend) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are written separately: without TCP_NODELAY, Nagle's algorithm holds the
        # body until the client's delayed ACK, 40 ms per request that no real service adds.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _serve(self) -> None:
            if backend.latency:
                time.sleep(backend.latency)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            host = self.headers.get("Host") or "127.0.0.1"
            request = Request(self.command, f"http://{host}{self.path}", dict(self.headers.items()), body)
            try:
                response = backend.dispatch(request)
            except (ConnectionLost, ConnectionRefused):
                self.close_connection = True  # no answer at all: the client sees the connection drop
                return
            self.send_response(response.status, response.reason)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler
