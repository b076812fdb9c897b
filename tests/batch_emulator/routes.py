"""HTTP routing: Batch REST paths -> Service operations, with the service's query options.

List operations honour $filter, $select and maxresults (1..1000, default 1000) and page with
odata.nextLink, whose $skiptoken carries the filter, the selection and where the next page starts,
so the SDK's next-link requests (which keep only the link's query) see the same list.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from . import files, odata, validate
from .render import JOB_FIELDS, NODE_FIELDS, POOL_FIELDS, TASK_FIELDS
from .service import Service
from .wire import (
    API_VERSION,
    Request,
    Response,
    ServiceError,
    invalid_query,
    json_response,
    now,
    rfc1123,
)

MAX_RESULTS = 1000
NODE_COUNT_FIELDS = frozenset({"poolId", "dedicated", "lowPriority"})
FILE_FIELDS = frozenset({"name", "url", "isDirectory", "properties"})


@dataclass(frozen=True)
class Call:
    """A routed request: path parameters (decoded), query options (first values), the JSON body."""

    request: Request
    params: dict[str, str]
    query: dict[str, str]
    base: str  # scheme://host of the request, for links

    def json(self) -> Any:
        return validate.parse_json(self.request.body)


Handler = Callable[[Call], Response]
# An item's JSON: all of it, or (given the names of the properties needed) at least those.
Render = Callable[[Collection[str] | None], dict[str, Any]]


# A list to page through: the (ordering key, JSON renderer) pairs after the given key (None: from the
# start). Keys are JSON values (they travel in the $skiptoken). A list ordered by id also takes a
# lower bound (odata.Bound) to start at.
Listing = Callable[..., Iterable[tuple[Any, Render]]]


def _rendered(items: Sequence[dict[str, Any]]) -> Listing:
    def after(key: int | None) -> Iterable[tuple[int, Render]]:
        start = 0 if key is None else key + 1
        return ((i, functools.partial(_copy, items[i])) for i in range(start, len(items)))

    return after


def _copy(item: dict[str, Any], names: Collection[str] | None = None) -> dict[str, Any]:
    return dict(item)


class Router:
    def __init__(self, service: Service, api_versions: Collection[str] = (API_VERSION,)) -> None:
        self.service = service
        self.api_versions = frozenset(api_versions)
        s = self
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, _compile(template), handler)
            for method, template, handler in (
                ("GET", "/pools", s.list_pools),
                ("POST", "/pools", s.create_pool),
                ("GET", "/pools/{poolId}", s.get_pool),
                ("HEAD", "/pools/{poolId}", s.pool_exists),
                ("DELETE", "/pools/{poolId}", s.delete_pool),
                ("POST", "/pools/{poolId}/resize", s.resize_pool),
                ("GET", "/pools/{poolId}/nodes", s.list_nodes),
                ("GET", "/pools/{poolId}/nodes/{nodeId}", s.get_node),
                ("GET", "/pools/{poolId}/nodes/{nodeId}/files", s.list_node_files),
                ("GET", "/pools/{poolId}/nodes/{nodeId}/files/{filePath+}", s.get_node_file),
                ("HEAD", "/pools/{poolId}/nodes/{nodeId}/files/{filePath+}", s.get_node_file),
                ("GET", "/nodecounts", s.list_node_counts),
                ("GET", "/jobs", s.list_jobs),
                ("POST", "/jobs", s.create_job),
                ("GET", "/jobs/{jobId}", s.get_job),
                ("PATCH", "/jobs/{jobId}", s.update_job),
                ("DELETE", "/jobs/{jobId}", s.delete_job),
                ("POST", "/jobs/{jobId}/terminate", s.terminate_job),
                ("GET", "/jobs/{jobId}/taskcounts", s.task_counts),
                ("GET", "/jobs/{jobId}/tasks", s.list_tasks),
                ("POST", "/jobs/{jobId}/tasks", s.create_task),
                ("POST", "/jobs/{jobId}/addtaskcollection", s.add_task_collection),
                ("GET", "/jobs/{jobId}/tasks/{taskId}", s.get_task),
                ("DELETE", "/jobs/{jobId}/tasks/{taskId}", s.delete_task),
                ("POST", "/jobs/{jobId}/tasks/{taskId}/terminate", s.terminate_task),
                ("GET", "/jobs/{jobId}/tasks/{taskId}/files", s.list_task_files),
                ("GET", "/jobs/{jobId}/tasks/{taskId}/files/{filePath+}", s.get_task_file),
                ("HEAD", "/jobs/{jobId}/tasks/{taskId}/files/{filePath+}", s.get_task_file),
            )
        ]

    def route(self, request: Request) -> Response:
        """Answer an authenticated request (ServiceError for the service's error answers)."""
        url = urlparse(request.url)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        version = query.get("api-version")
        if version is None:
            raise ServiceError(
                400, "MissingRequiredQueryParameter", values={"QueryParameterName": "api-version"}
            )
        if version not in self.api_versions:
            raise invalid_query(
                "api-version", version, f"The emulator speaks {', '.join(sorted(self.api_versions))}."
            )
        for method, pattern, handler in self.routes:
            m = pattern.fullmatch(url.path)
            if m is not None and method == request.method:
                params = {k: unquote(v) for k, v in m.groupdict().items()}
                return handler(Call(request, params, query, f"{url.scheme}://{url.netloc}"))
        raise ServiceError(
            501, "NotImplemented", f"The Batch emulator does not implement {request.method} {url.path}."
        )

    # ---- pools --------------------------------------------------------------------------------

    def create_pool(self, call: Call) -> Response:
        pool = self.service.create_pool(call.json())
        return _created(call, f"/pools/{pool.id}", pool.etag)

    def get_pool(self, call: Call) -> Response:
        return _entity(call, self.service.pool_json(call.params["poolId"]), POOL_FIELDS, "pools/@Element")

    def pool_exists(self, call: Call) -> Response:
        self.service.pool_json(call.params["poolId"])
        return Response(200)

    def list_pools(self, call: Call) -> Response:
        return _page(call, _rendered(self.service.pools_json()), POOL_FIELDS, "pools")

    def delete_pool(self, call: Call) -> Response:
        self.service.delete_pool(call.params["poolId"])
        return Response(202)

    def resize_pool(self, call: Call) -> Response:
        self.service.resize_pool(call.params["poolId"], call.json())
        return Response(202)

    def list_nodes(self, call: Call) -> Response:
        nodes = self.service.nodes_json(call.params["poolId"])
        return _page(call, _rendered(nodes), NODE_FIELDS, "nodes")

    def get_node(self, call: Call) -> Response:
        node = self.service.node_json(call.params["poolId"], call.params["nodeId"])
        return _entity(call, node, NODE_FIELDS, "nodes/@Element")

    def list_node_counts(self, call: Call) -> Response:
        return _page(call, _rendered(self.service.node_counts_json()), NODE_COUNT_FIELDS, "poolnodecounts")

    def list_node_files(self, call: Call) -> Response:
        root, url = self.service.node_files(call.params["poolId"], call.params["nodeId"])
        entries = files.listing(root, url, recursive=files.split_recursive(call.query.get("recursive")))
        return _page(call, _rendered(entries), FILE_FIELDS, "files")

    def get_node_file(self, call: Call) -> Response:
        root, url = self.service.node_files(call.params["poolId"], call.params["nodeId"])
        return self._file(call, root, url)

    # ---- jobs and tasks -----------------------------------------------------------------------

    def create_job(self, call: Call) -> Response:
        job = self.service.create_job(call.json())
        return _created(call, f"/jobs/{job.id}", job.etag)

    def get_job(self, call: Call) -> Response:
        return _entity(call, self.service.job_json(call.params["jobId"]), JOB_FIELDS, "jobs/@Element")

    def list_jobs(self, call: Call) -> Response:
        return _page(call, _rendered(self.service.jobs_json()), JOB_FIELDS, "jobs")

    def update_job(self, call: Call) -> Response:
        job = self.service.update_job(call.params["jobId"], call.json())
        return Response(200, _entity_headers(call, f"/jobs/{job.id}", job.etag))

    def terminate_job(self, call: Call) -> Response:
        body = call.json() if call.request.body else {}
        reason = body.get("terminateReason") if isinstance(body, dict) else None
        job = self.service.terminate_job(call.params["jobId"], reason)
        return Response(202, _entity_headers(call, f"/jobs/{job.id}", job.etag))

    def delete_job(self, call: Call) -> Response:
        self.service.delete_job(call.params["jobId"])
        return Response(202)

    def task_counts(self, call: Call) -> Response:
        return json_response(200, self.service.task_counts_json(call.params["jobId"]))

    def create_task(self, call: Call) -> Response:
        task = self.service.add_task(call.params["jobId"], call.json())
        return _created(call, f"/jobs/{task.job_id}/tasks/{task.id}", task.etag)

    def add_task_collection(self, call: Call) -> Response:
        request_id = call.request.headers.get("request-id") or ""
        results = self.service.add_tasks(call.params["jobId"], call.json(), request_id)
        return json_response(
            200, {"odata.metadata": f"{call.base}/$metadata#taskaddresult", "value": results}
        )

    def get_task(self, call: Call) -> Response:
        task = self.service.task_json(call.params["jobId"], call.params["taskId"])
        return _entity(call, task, TASK_FIELDS, "tasks/@Element")

    def list_tasks(self, call: Call) -> Response:
        tasks = functools.partial(self.service.tasks_after, call.params["jobId"])  # 404 at the first page
        return _page(call, tasks, TASK_FIELDS, "tasks", allowed=odata.TASK_FILTERS, by_id=True)

    def delete_task(self, call: Call) -> Response:
        self.service.delete_task(call.params["jobId"], call.params["taskId"])
        return Response(200)

    def terminate_task(self, call: Call) -> Response:
        self.service.terminate_task(call.params["jobId"], call.params["taskId"])
        return Response(204)

    def list_task_files(self, call: Call) -> Response:
        root, url = self.service.task_files(call.params["jobId"], call.params["taskId"])
        entries = files.listing(root, url, recursive=files.split_recursive(call.query.get("recursive")))
        return _page(call, _rendered(entries), FILE_FIELDS, "files")

    def get_task_file(self, call: Call) -> Response:
        root, url = self.service.task_files(call.params["jobId"], call.params["taskId"])
        return self._file(call, root, url)

    def _file(self, call: Call, root: Any, url: str) -> Response:
        path = files.relative(call.params["filePath"])
        headers = call.request.headers
        byte_range = next((v for k, v in headers.items() if k.lower() in ("ocp-range", "range")), None)
        return files.file_response(
            files.resolve(root, path),
            f"{url}/{path}",
            head=call.request.method == "HEAD",
            byte_range=byte_range,
        )


# ---- helpers ------------------------------------------------------------------------------------


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)\+\}", r"(?P<\1>.+)", template)
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(pattern)


def _entity_headers(call: Call, path: str, etag: str) -> dict[str, str]:
    return {"ETag": etag, "Last-Modified": _http_now(), "DataServiceId": f"{call.base}{path}"}


def _created(call: Call, path: str, etag: str) -> Response:
    return Response(201, {**_entity_headers(call, path, etag), "Location": f"{call.base}{path}"})


def _entity(call: Call, item: Mapping[str, Any], fields: Collection[str], kind: str) -> Response:
    select = odata.parse_select(call.query["$select"], fields) if call.query.get("$select") else None
    body = {"odata.metadata": f"{call.base}/$metadata#{kind}", **odata.project(item, select)}
    return json_response(200, body, {"ETag": str(item.get("eTag", "")), "Last-Modified": _http_now()})


def _page(
    call: Call,
    items: Listing,
    fields: Collection[str],
    kind: str,
    *,
    allowed: Mapping[str, Collection[str]] | None = None,
    by_id: bool = False,
) -> Response:
    """One page of a list. `items(after)`: the (ordering key, JSON renderer) pairs after a key, in
    order; a page starts where the last one ended and renders only the items it looks at.
    `allowed`: what $filter may use (odata.parse_filter). `by_id`: the keys are the casefolded ids
    and `items(after, low)` starts at a bound on them, so a filter's bounds on id (odata.Filter)
    start the listing at the lower one and end it past the upper one: the same items as a scan of
    them all (the filter is still applied to each), without rendering the others."""
    token = call.query.get("$skiptoken")
    state = _read_token(token) if token else {}
    filter_text = state.get("filter", call.query.get("$filter") or None)
    select_text = state.get("select", call.query.get("$select") or None)
    after = state.get("after")
    size_text = call.query.get("maxresults", str(MAX_RESULTS))
    if not size_text.isdigit() or not 1 <= int(size_text) <= MAX_RESULTS:
        # An out-of-range maxresults is InvalidQueryParameterValue (recordings: tests/recordings/README.md).
        raise invalid_query("maxresults", size_text, f"from 1 to {MAX_RESULTS}")
    size = int(size_text)
    where = odata.parse_filter(filter_text, fields, allowed) if filter_text else None
    predicate = where.predicate if where is not None else None
    low = where.id_low if where is not None and by_id else None
    high = where.id_high if where is not None and by_id else None
    select = odata.parse_select(select_text, fields) if select_text else None
    # Only what the page shows and the filter reads need be rendered (the emulator's shortcut).
    needed = None if select is None else {*select, *(where.fields if where is not None else ())}
    page: list[dict[str, Any]] = []
    more = False
    for key, render in items(after, low) if low is not None else items(after):
        if high is not None and (key > high.value or (key == high.value and not high.inclusive)):
            break  # ordered by id: nothing further matches
        item = render(needed)
        if predicate is not None and not predicate(item):
            continue
        if len(page) == size:
            more = True
            break
        page.append(odata.project(item, select))
        after = key
    body: dict[str, Any] = {"odata.metadata": f"{call.base}/$metadata#{kind}", "value": page}
    if more:
        path = urlparse(call.request.url).path
        next_token = _write_token({"filter": filter_text, "select": select_text, "after": after})
        body["odata.nextLink"] = (
            f"{call.base}{path}?api-version={call.query['api-version']}&maxresults={size}"
            + (f"&$skiptoken={next_token}")
        )
    return json_response(200, body)


def _write_token(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _read_token(token: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise invalid_query("$skiptoken", token, "not a token this service issued") from None
    if not isinstance(state, dict):
        raise invalid_query("$skiptoken", token, "not a token this service issued")
    return state


def _http_now() -> str:
    return rfc1123(now())
