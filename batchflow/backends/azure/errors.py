"""What Azure Batch's errors say, in one line: the service's code and message (its first line: Batch
messages end with "RequestId:..." and "Time:..." lines), redacted; and the wait a throttled answer
asks for. Every Batch backend module formats errors through here.
"""

from __future__ import annotations

import datetime
import email.utils
import re

from azure.batch import models as bm
from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpResponse

from batchflow.errors import BatchflowError, first_line
from batchflow.redact import redact

NO_ANSWER = (ServiceRequestError, ServiceResponseError)  # the connection failed, or the answer was lost
_NUMBER = re.compile(r"\d+(\.\d*)?")


def error_code(e: HttpResponseError) -> str | None:
    """The Batch error code of an answer (PoolExists, JobNotFound, ...), if it has one."""
    return e.error.code if e.error is not None and e.error.code else None


def batch_message(e: HttpResponseError) -> str:
    """The service's message (Batch errors carry it as {"lang": ..., "value": ...}), first line."""
    model = e.model
    if isinstance(model, bm.BatchError) and model.message is not None and model.message.value:
        return first_line(model.message.value)
    return e.reason or first_line(str(e))


def describe(e: AzureError) -> str:
    """'409 PoolExists: The specified pool already exists.', or 'ServiceRequestError: ...' when no
    answer came (or no token could be had to ask), redacted."""
    if isinstance(e, HttpResponseError) and e.status_code is not None:
        return redact(f"{e.status_code} {error_code(e) or e.reason}: {batch_message(e)}")
    return redact(f"{type(e).__name__}: {first_line(str(e))}")


def batch_error(what: str, e: AzureError) -> BatchflowError:
    """'cannot read pool 'p': 503 ServerBusy: ...': what batchflow was doing, then `describe(e)`."""
    return BatchflowError(f"{what}: {describe(e)}")


def retry_after(e: HttpResponseError) -> float | None:
    """The wait the service asked for (Retry-After, or azure's retry-after-ms headers), in seconds."""
    if e.response is None:
        return None
    response: HttpResponse = e.response  # type: ignore[assignment]  # azure-core types it as a protocol
    headers = {k.lower(): v for k, v in response.headers.items()}
    for name, scale in (("retry-after", 1.0), ("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        if name in headers:
            seconds = _seconds(headers[name])
            return None if seconds is None else seconds * scale
    return None


def _seconds(value: str) -> float | None:
    """A Retry-After value (seconds, or an HTTP date) as seconds from now; None if it is neither."""
    if _NUMBER.fullmatch(value.strip()):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # TypeError on Python 3.10, ValueError on later versions
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
