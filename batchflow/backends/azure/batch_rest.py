"""The two Batch requests whose answers batchflow reads as JSON: Add Task Collection and List Tasks.

They go through the BatchClient's own pipeline (`send_request`: its transport, shared-key or token
signing, retry policy), built as azure-batch 15.x builds them for `create_task_collection` and
`list_tasks`: the same method, path, query, headers and body, so the service sees the same
requests (tests/test_batch_rest.py sends each both ways and compares them). Only what the client
does with them changes:
- Add Task Collection takes the body already serialized: the submitter measures every task's JSON
  to keep each request under 1 MB, and that JSON is the body, serialized once.
- The answers are returned as the service's JSON, not decoded into SDK models: the SDK decodes
  every task of every answer eagerly, and then every attribute read decodes its value again,
  while batchflow reads a few keys of each (bench/azure_scale.py; BENCHMARKS.md, issue 12).
- Errors are raised as the SDK raises them: 401, 404, 409 and 304 as azure-core's
  ClientAuthenticationError, ResourceNotFoundError, ResourceExistsError, ResourceNotModifiedError,
  anything else that is not 200 as HttpResponseError with the Batch error as its `model`.
- The api-version is API_VERSION, the SDK's default (batchflow's clients never set another): a
  BatchClient made with `api_version=` would still send this one here. An azure-batch whose
  default differs fails tests/test_batch_rest.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlparse

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.rest import HttpRequest, HttpResponse
from azure.core.utils import case_insensitive_dict

log = logging.getLogger("batchflow")

# azure-batch 15.1's api-version, which BatchClient sends by default and batchflow never changes.
API_VERSION = "2025-06-01"
JSON_CONTENT = "application/json; odata=minimalmetadata"  # what create_task_collection sends
_ERROR_MAP = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}


def add_task_collection_request(job_id: str, body: str) -> HttpRequest:
    """POST /jobs/{job}/addtaskcollection with `body`: the JSON of a BatchTaskGroup ({"value": [...]})."""
    return HttpRequest(
        "POST",
        f"/jobs/{quote(job_id, safe='')}/addtaskcollection",
        params={"api-version": API_VERSION},
        headers={"content-type": JSON_CONTENT, "Accept": "application/json"},
        content=body,
    )


def list_tasks_request(job_id: str, *, filter: str, select: Sequence[str]) -> HttpRequest:
    """The first page of GET /jobs/{job}/tasks with $filter and $select."""
    return HttpRequest(
        "GET",
        f"/jobs/{quote(job_id, safe='')}/tasks",
        params={
            "api-version": API_VERSION,
            "$filter": quote(filter, safe=""),
            "$select": ",".join(quote(s, safe="") for s in select),
        },
        headers={"Accept": "application/json"},
    )


def next_page_request(next_link: str) -> HttpRequest:
    """The page an answer's `odata.nextLink` names, asked for as the SDK's pager asks for it: the
    link's query re-quoted, with the client's api-version."""
    parsed = urlparse(next_link)
    params = case_insensitive_dict(
        {key: [quote(v) for v in values] for key, values in parse_qs(parsed.query).items()}
    )
    params["api-version"] = API_VERSION
    return HttpRequest("GET", urljoin(next_link, parsed.path), params=params)


def send(client: BatchClient, request: HttpRequest, **kwargs: Any) -> Any:
    """The answer's JSON; a status other than 200 raises as the SDK's operations raise it.
    `kwargs` go to the pipeline (e.g. retry_total=0)."""
    response = client.send_request(request, **kwargs)
    if response.status_code != 200:
        map_error(status_code=response.status_code, response=response, error_map=_ERROR_MAP)
        raise HttpResponseError(response=response, model=_batch_error(response))
    return response.json()


def _batch_error(response: HttpResponse) -> bm.BatchError | None:
    """The answer's Batch error, or None when its body is not one (as the SDK's failsafe decoding)."""
    try:
        data = response.json()
    except ValueError:  # not JSON, or not UTF-8 (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        log.debug("a %d answer without a JSON body", response.status_code)
        return None
    return bm.BatchError(data) if isinstance(data, dict) else None


def task_group_body(task_json: Sequence[str]) -> str:
    """The JSON of {"value": [task, ...]} from each task's `json.dumps`, with json's default
    separators, as the SDK dumps a BatchTaskGroup: byte for byte the body it would send."""
    return '{"value": [' + ", ".join(task_json) + "]}"
