"""A loopback HTTP proxy in front of a server (Azurite), whose faults a test switches on and off.

    with FaultProxy(upstream_port) as proxy:
        proxy.answer_503(3)        # the next 3 requests get "503 ServerBusy" (None: every request)
        proxy.drop(2, after=1)     # one more request passes, then 2 lose their connection unanswered
        proxy.pass_through()       # no more faults
        proxy.delay(0.02)          # and every relayed request waits 20 ms first (a distant service)

Each request is read whole, then faulted or relayed to the upstream on a connection of its own
(`Connection: close` both ways), so every fault hits exactly one request. `requests` counts the
requests seen, `faults` those faulted.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from types import TracebackType

_SERVER_BUSY_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy. (fault injected by the test proxy)</Message></Error>"
)
_SERVER_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/xml\r\n"
    b"x-ms-error-code: ServerBusy\r\n"
    b"Content-Length: " + str(len(_SERVER_BUSY_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _SERVER_BUSY_BODY
)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._mode = "pass"
        self._remaining: int | None = 0
        self._after = 0
        self._delay = 0.0
        self.requests = 0
        self.faults = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._accepter = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._accepter.start()

    def url(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    # ---- switches -------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Every relayed request waits `seconds` before it is sent on (0: none)."""
        self._delay = seconds

    def pass_through(self) -> None:
        self._set("pass", 0)

    def answer_503(self, count: int | None, *, after: int = 0) -> None:
        """After `after` more requests pass, the next `count` get 503 ServerBusy (None: all of them)."""
        self._set("503", count, after)

    def drop(self, count: int | None, *, after: int = 0) -> None:
        """After `after` more requests pass, the next `count` lose their connection before any
        response (None: all of them)."""
        self._set("drop", count, after)

    def _set(self, mode: str, count: int | None, after: int = 0) -> None:
        with self._lock:
            self._mode, self._remaining, self._after = mode, count, after

    def _next_action(self) -> str:
        with self._lock:
            self.requests += 1
            if self._mode == "pass" or self._remaining == 0:
                return "pass"
            if self._after > 0:
                self._after -= 1
                return "pass"
            if self._remaining is not None:
                self._remaining -= 1
            self.faults += 1
            return self._mode

    # ---- serving --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                request = _read_request(client)
                if request is None:
                    return
                action = self._next_action()
                if action == "503":
                    client.sendall(_SERVER_BUSY)
                elif action == "pass":
                    if self._delay:
                        time.sleep(self._delay)
                    self._relay(request, client)
                # "drop": the connection closes without a response
            except OSError:  # the client or the upstream went away: nothing to relay
                return

    def _relay(self, request: bytes, client: socket.socket) -> None:
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(request)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown() wakes the accept() blocked in the other thread (close() alone does not on Linux);
        # some platforms refuse it on a listening socket, where close() is enough.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_request(sock: socket.socket) -> bytes | None:
    """One whole HTTP/1.1 request (Content-Length bodies), its Connection header set to close;
    None if the client closed the connection first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        if key == b"transfer-encoding":
            raise ValueError("chunked request bodies are not supported by the fault proxy")
        if key not in (b"connection", b"keep-alive"):
            kept.append(line)
    kept.append(b"Connection: close")
    received = bytearray(body)
    while len(received) < length:
        chunk = sock.recv(min(65536, length - len(received)))
        if not chunk:
            return None
        received += chunk
    return b"\r\n".join(kept) + b"\r\n\r\n" + bytes(received)


def main() -> None:
    """`python tests/faultproxy.py UPSTREAM_PORT [DELAY_MS]`: serve (printing the port) until stdin closes."""
    upstream, delay_ms = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with FaultProxy(upstream) as proxy:
        proxy.delay(delay_ms / 1000)
        print(proxy.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
