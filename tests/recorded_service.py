"""A stand-in for the Batch service that answers with what the real service answered.

`RecordedService` plays back recorded exchanges (tests/recordings/, real HTTP sessions of the Azure
SDK test suites against live Batch accounts): each request the SDK sends is answered with the next
recorded exchange of the same method and path, status, headers and body exactly as recorded. It
plugs into the emulator's azure-core transport, so batchflow's own client code (the real azure-batch
SDK, its deserialisation, paging and error mapping) meets the service's real answers, and a test can
check that batchflow concludes what it would conclude on the real service.

A request with no recorded answer left fails the test loudly: batchflow asked something the
recordings cannot answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlparse

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from batch_emulator.transport import EmulatorTransport
from batch_emulator.wire import Request, Response
from recorded import Exchange

ENDPOINT = "https://recorded.eastus.batch.azure.com"
KEY = base64.b64encode(b"a key the recorded service never checks").decode()


class NoRecordedAnswer(AssertionError):
    pass


class RecordedService:
    """Answers requests from a script of recorded exchanges, in order per (method, path)."""

    latency = 0.0

    def __init__(self, exchanges: Iterable[Exchange]) -> None:
        self.script = list(exchanges)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, query, body

    def record_sleep(self, seconds: float) -> float:
        return 0.0  # retries and Retry-After waits: none needed against recorded answers

    def dispatch(self, request: Request) -> Response:
        url = urlparse(request.url)
        path = unquote(url.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.requests.append((request.method, path, query, request.body))
        for i, exchange in enumerate(self.script):
            if exchange.request.method == request.method and _same_path(exchange.request.path, path):
                del self.script[i]
                return _response(exchange)
        raise NoRecordedAnswer(f"no recorded answer left for {request.method} {path}")

    def client(self) -> BatchClient:
        """A BatchClient whose every request this service answers. The SDK retries nothing."""
        return BatchClient(
            ENDPOINT,
            AzureNamedKeyCredential("recorded", KEY),
            transport=EmulatorTransport(self),
            retry_total=0,
        )


def _same_path(recorded: str, sent: str) -> bool:
    return unquote(recorded).rstrip("/").casefold() == sent.rstrip("/").casefold()


def _response(exchange: Exchange) -> Response:
    response = exchange.response
    body = response.body
    headers = {str(k): str(v) for k, v in response.headers.items()}
    if body is None:
        return Response(response.status, headers)
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    if "content-type" not in {k.lower() for k in headers} and not isinstance(body, str):
        headers["Content-Type"] = "application/json;odata=minimalmetadata"
    # Bodies are trimmed to what matters: the recorded Content-Length no longer fits them.
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    headers["Content-Length"] = str(len(data))
    return Response(response.status, headers, data)
