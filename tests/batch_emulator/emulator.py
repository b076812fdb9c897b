"""BatchEmulator: an Azure Batch account on this machine, for tests driving the real azure-batch SDK.

    emu = BatchEmulator(account="testacct", key=KEY, workdir=tmp_path)
    client = BatchClient(emu.endpoint, AzureNamedKeyCredential("testacct", KEY), transport=emu.transport())
    # or: client = emu.client(retry_total=0)
    emu.faults.fail_next("POST", "/jobs/{job}/addtaskcollection", status=503, count=3)
    emu.preempt_node(pool_id, node_id)          # Spot preemption: its running tasks are requeued
    emu.advance(3600)                           # the service's clock jumps an hour (wall clocks expire)
    emu.fail_start_task(pool_id, exit_code=1, stderr="E: Unable to locate package ffmpeg")
    emu.requests                                # every request: (method, path, query, status)
    emu.latency = 0.05                          # seconds added to every request
    emu.close()

`pool_id` in fail_start_task, fail_allocation and override_start_task is a pool's id, or an
autoPoolIdPrefix: the setting then applies to every auto pool made with that prefix (their ids are
generated, so a test cannot name them ahead).

Tasks run for real (subprocesses under workdir/<pool>/<node>/, Batch's folder layout), unless
`instant=True`: then a task completes with exit code 0 on the control loop's next pass, without a
process (and start tasks succeed the same way), for scale tests.
"""

from __future__ import annotations

import base64
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlparse

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from .auth import Authenticator
from .faults import FaultKind, Faults, compile_pattern
from .lifecycle import Lifecycle
from .routes import Router
from .service import Service
from .state import AllocationFault, AutoPoolFault, StartTaskFault, Store, Timings
from .transport import ConnectionLost, ConnectionRefused, EmulatorTransport, LoopbackServer
from .wire import (
    API_VERSION,
    Request,
    Response,
    ServiceError,
    error_json,
    json_response,
    new_request_id,
    now,
    rfc1123,
)

DEFAULT_KEY = base64.b64encode(b"batch-emulator-shared-key-32byte").decode()
MAX_BODY_BYTES = 1024 * 1024  # Batch refuses a request body of 1 MB or more (RequestBodyTooLarge)


class RequestRecord(NamedTuple):
    method: str
    path: str  # decoded, without the query
    query: dict[str, str]
    status: int  # 0: the connection was refused or the answer lost


class BatchEmulator:
    def __init__(
        self,
        account: str = "testacct",
        key: str = DEFAULT_KEY,
        *,
        workdir: Path,
        instant: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        timings: Timings | None = None,
        latency: float = 0.0,
        sleep_scale: float = 0.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        api_versions: tuple[str, ...] = (API_VERSION,),
    ) -> None:
        """`token`: a bearer token the account also accepts. `sleep_scale`: the fraction of the SDK's
        back-off / Retry-After waits actually slept (0: none; they are recorded in `sleeps`)."""
        self.account = account
        self.key = key
        self.endpoint = endpoint or f"https://{account}.eastus.batch.azure.com"
        self.workdir = Path(workdir)
        self.store = Store(account, self.endpoint, self.workdir, instant, timings or Timings())
        self.lifecycle = Lifecycle(self.store)
        self.service = Service(self.store, self.lifecycle)
        self.router = Router(self.service, api_versions)
        self.auth = Authenticator(account, key, token)
        self.faults = Faults()
        self.latency = latency
        self.sleep_scale = sleep_scale
        self.max_body_bytes = max_body_bytes
        self.requests: list[RequestRecord] = []
        self.sleeps: list[float] = []  # every back-off / Retry-After wait the SDK asked the transport for
        self.internal_errors: list[str] = []  # emulator bugs (answered 500); a test can assert there are none
        self._log_lock = threading.Lock()
        self._servers: list[LoopbackServer] = []
        self._closed = False
        self.lifecycle.start()

    # ---- clients ----------------------------------------------------------------------------

    def credential(self) -> AzureNamedKeyCredential:
        return AzureNamedKeyCredential(self.account, self.key)

    def transport(self) -> EmulatorTransport:
        return EmulatorTransport(self)

    def client(self, **kwargs: Any) -> BatchClient:
        """A BatchClient on this emulator (shared key, in-process transport); kwargs go to BatchClient."""
        return BatchClient(self.endpoint, self.credential(), transport=self.transport(), **kwargs)

    def serve(self) -> str:
        """Also answer over HTTP on 127.0.0.1; returns the endpoint URL (http://127.0.0.1:PORT)."""
        server = LoopbackServer(self)
        self._servers.append(server)
        return server.url

    # ---- the request path -------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        url = urlparse(request.url)
        path = unquote(url.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        request_id = new_request_id()
        fault = self.faults.take(request.method, url.path)
        if fault is not None and fault.kind is FaultKind.REFUSE_CONNECTION:
            self._log(request.method, path, query, 0)
            raise ConnectionRefused(
                f"connection refused (injected by the Batch emulator): {request.method} {path}"
            )
        try:
            if fault is not None and fault.kind is FaultKind.ERROR:
                raise ServiceError(fault.status, fault.code, fault.message, headers=fault.headers)
            self.auth.check(request)
            if len(request.body) >= self.max_body_bytes:
                raise ServiceError(413, "RequestBodyTooLarge")
            response = self.router.route(
                Request(
                    request.method, request.url, {**request.headers, "request-id": request_id}, request.body
                )
            )
        except ServiceError as e:
            response = self._error(e, f"{url.scheme}://{url.netloc}", request_id, request.method == "HEAD")
        except Exception as e:  # an emulator bug: answer 500 and keep it for the test to see
            self.internal_errors.append(f"{request.method} {path}: {traceback.format_exc()}")
            response = self._error(
                ServiceError(500, "InternalError", f"Batch emulator bug: {e!r}"),
                f"{url.scheme}://{url.netloc}",
                request_id,
                request.method == "HEAD",
            )
        client_id = next((v for k, v in request.headers.items() if k.lower() == "client-request-id"), None)
        response.headers.update(
            {"request-id": request_id, "Date": rfc1123(now()), "DataServiceVersion": "3.0"}
        )
        if client_id is not None:
            response.headers["client-request-id"] = client_id
        response.headers.setdefault("Content-Length", str(len(response.body)))
        if fault is not None and fault.kind is FaultKind.LOSE_RESPONSE:
            self._log(request.method, path, query, 0)
            raise ConnectionLost(
                f"connection lost after the service acted (injected): {request.method} {path}"
            )
        self._log(request.method, path, query, response.status)
        return response

    def _error(self, e: ServiceError, base: str, request_id: str, head: bool) -> Response:
        if head:
            return Response(e.status, dict(e.headers))
        return json_response(e.status, error_json(e.code, e.message, e.values, base, request_id), e.headers)

    def _log(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        with self._log_lock:
            self.requests.append(RequestRecord(method, path, query, status))

    def record_sleep(self, seconds: float) -> float:
        with self._log_lock:
            self.sleeps.append(seconds)
        return seconds * self.sleep_scale

    def count(self, method: str = "*", path: str = "*") -> int:
        """Requests seen whose method and path match (fault pattern syntax: `{x}` one segment, `*`)."""
        regex = compile_pattern(path)
        with self._log_lock:
            return sum(1 for r in self.requests if method in ("*", r.method) and regex.fullmatch(r.path))

    # ---- what happens to nodes --------------------------------------------------------------

    def node_ids(self, pool_id: str) -> list[str]:
        with self.store.lock:
            return list(self.store.pool(pool_id).nodes)

    def preempt_node(self, pool_id: str, node_id: str, *, restore_after: float | None = None) -> None:
        """Spot preemption: the node's running tasks go back to active (requeueCount + 1); the node is
        `preempted` until `restore_node` (or `restore_after` seconds), when it starts again."""
        with self.store.lock:
            node = self.store.node(pool_id, node_id)
            if node.dedicated:
                raise ValueError(f"node {node_id} is dedicated: only Spot (low-priority) nodes are preempted")
            self.store.evict(node, "node preempted")
            node.set_state("preempted")
            node.restore_at = None if restore_after is None else self.store.after(restore_after)
            self.store.wake()

    def make_node_unusable(self, pool_id: str, node_id: str) -> None:
        """The node turns `unusable`: its running tasks are requeued, nothing runs on it."""
        with self.store.lock:
            node = self.store.node(pool_id, node_id)
            self.store.evict(node, "node unusable")
            node.set_state("unusable")
            node.errors = [
                {
                    "code": "NodeUnusable",
                    "message": "The node is unusable (injected by the Batch emulator).",
                    "errorDetails": [],
                }
            ]
            self.store.wake()

    def restore_node(self, pool_id: str, node_id: str) -> None:
        """A preempted or unusable node comes back: it starts again (and reruns the start task)."""
        with self.store.lock:
            node = self.store.node(pool_id, node_id)
            if node.state not in ("preempted", "unusable", "starttaskfailed"):
                raise ValueError(f"node {node_id} is {node.state}: nothing to restore")
            node.errors = []
            node.restore_at = None
            node.generation += 1
            node.set_state("starting")
            self.store.wake()

    def fail_start_task(
        self, pool_id: str, *, exit_code: int = 1, stderr: str = "", stdout: str = ""
    ) -> None:
        """From now on, the pool's start task fails on every node that runs it (the command is not run):
        startup/stderr.txt holds `stderr`; with waitForSuccess the node turns `starttaskfailed`.
        Call it before creating the pool to fail the first start of every node."""
        with self.store.lock:
            self.store.start_task_faults[pool_id.casefold()] = StartTaskFault(exit_code, stderr, stdout)

    def lag_task_counts(self, seconds: float) -> None:
        """From now on Get Task Counts answers the counts as they were `seconds` ago (as first asked
        for): Microsoft's docs say they "may not always be up to date"."""
        with self.store.lock:
            self.store.counts_lag = seconds

    def fail_allocation(
        self,
        pool_id: str,
        code: str = "AccountCoreQuotaReached",
        message: str = "The specified account has reached core quota",
        *,
        dedicated: bool = True,
        spot: bool = True,
    ) -> None:
        """From now on, the pool's resizes allocate no node of the kinds named (dedicated, Spot) and
        end steady with a resize error, as when the account's core quota is used up. The codes are
        Batch's PoolResizeErrorCodes (Microsoft's docs: AccountCoreQuotaReached,
        AccountLowPriorityCoreQuotaReached, AccountSpotCoreQuotaReached, AllocationFailed,
        AllocationTimedOut); the default message is that page's description of the code. Call it
        before creating the pool to fail its first allocation."""
        with self.store.lock:
            self.store.allocation_faults[pool_id.casefold()] = AllocationFault(code, message, dedicated, spot)

    def fail_auto_pool(self, code: str, message: str) -> None:
        """The next auto pool cannot be created: its job completes at once, without a pool, its
        executionInfo.schedulingError holding `code` and `message` (BatchPoolInfo, REST spec)."""
        with self.store.lock:
            self.store.auto_pool_fault = AutoPoolFault(code, message)

    def override_start_task(self, pool_id: str, command_line: str) -> None:
        """The pool's start task runs `command_line` instead of its own (same folders, environment,
        resource files and retries); the pool still reports its own. For start tasks that must not run
        on this machine as written (apt-get install ...): substitute a local stand-in."""
        with self.store.lock:
            self.store.start_task_commands[pool_id.casefold()] = command_line

    # ---- control ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the service's clock `seconds` ahead, at once: whatever falls due meanwhile (a job's
        maxWallClockTime, a node's boot, a deletion, a Spot node's restore) is done on the control
        loop's next passes, as if that much time had gone by. Timestamps in answers stay this
        machine's time, and so do running task processes (their own maxWallClockTime included)."""
        if seconds < 0:
            raise ValueError("the service's clock only moves forward")
        with self.store.lock:
            self.store.skew += seconds
            self.store.wake()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing moves on its own inside the block (no allocation, scheduling, completion, deletion):
        the state the requests leave is the state the next request sees."""
        with self.store.lock:
            self.store.paused = True
        try:
            yield
        finally:
            with self.store.lock:
                self.store.paused = False
                self.store.wake()

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Batch emulator did not reach {what} within {timeout:g} s")
            time.sleep(0.01)

    def settle(self, passes: int = 2, timeout: float = 30.0) -> None:
        """Return once the control loop has made `passes` more passes: whatever the service would do on
        its own right now (allocate, schedule, complete, delete) has been done. Not while paused."""
        with self.store.lock:
            target = self.lifecycle.tick + passes
            self.store.wakeup.notify_all()
        self.wait_for(lambda: self.lifecycle.tick >= target, timeout, f"{passes} control loop passes")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        self.lifecycle.stop()

    def __enter__(self) -> BatchEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
