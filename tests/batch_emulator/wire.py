"""What travels on the wire: requests, responses, the service's error bodies, times and durations.

Error bodies follow the Batch REST API (batch-status-and-error-codes):
    {"odata.metadata": ..., "code": "PoolNotFound",
     "message": {"lang": "en-US", "value": "The specified pool does not exist.\\nRequestId:...\\nTime:..."},
     "values": [{"key": ..., "value": ...}]}
The real service appends the request id and time to every message; so does the emulator, so a client
that shows messages must cope with those lines (`message_text` gives the first line back).
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "2025-06-01"
JSON_TYPE = "application/json;odata=minimalmetadata"
ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The service's messages for the codes the emulator returns (first line of message.value).
MESSAGES = {
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of Authorization "
    "header is formed correctly including the signature.",
    "FileNotFound": "The specified file does not exist.",
    "InvalidPropertyValue": "The value provided for one of the properties in the request body is invalid.",
    "InvalidQueryParameterValue": "Value for one of the query parameters specified in the request URI is "
    "invalid.",
    "InvalidRequestBody": "The specified Request Body is not syntactically valid.",
    "InvalidUri": "The requested URI does not represent any resource on the server.",
    "JobBeingDeleted": "The specified job has been marked for deletion and is being garbage collected.",
    "JobCompleted": "The specified job is already in a completed state.",
    "JobExists": "The specified job already exists.",
    "JobNotFound": "The specified job does not exist.",
    "MissingRequiredProperty": "A required property was not specified in the request body.",
    "MissingRequiredQueryParameter": "A query parameter that's mandatory for this request is not specified.",
    "NodeNotFound": "The specified node does not exist.",
    "NotImplemented": "The Batch emulator does not implement this operation.",
    "OutOfRangeQueryParameterValue": "A query parameter specified in the request URI is outside the "
    "permissible range.",
    "PoolBeingDeleted": "The specified pool has been marked for deletion and is being reclaimed.",
    "PoolExists": "The specified pool already exists.",
    "PoolNotFound": "The specified pool does not exist.",
    "RequestBodyTooLarge": "The request body is too large and exceeds the maximum permissible limit.",
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "InternalError": "Server encountered an internal error. Please try again after some time.",
    "TaskExists": "The specified task already exists.",
    "TaskNotFound": "The specified task does not exist.",
    "TooManyRequests": "The request rate is too high. Retry after the time given in the Retry-After header.",
    "UnsupportedHttpVerb": "The resource doesn't support the specified HTTP verb.",
}
STATUS_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    """One HTTP request as the service sees it. `path` is still percent-encoded, as signed."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def reason(self) -> str:
        return STATUS_REASONS.get(self.status, "Unknown")


# Details the service attaches to an error code when nothing more specific is given. RequestBodyTooLarge
# carries values [{key: MaxLimit, value: "1048576"}] (recordings: tests/recordings/README.md).
DEFAULT_VALUES: dict[str, dict[str, str]] = {"RequestBodyTooLarge": {"MaxLimit": "1048576"}}


class ServiceError(Exception):
    """An error answer: HTTP status + Batch error code, message and key/value details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str | None = None,
        values: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, code)
        self.values = dict(values if values is not None else DEFAULT_VALUES.get(code, {}))
        self.headers = dict(headers or {})
        super().__init__(f"{status} {code}: {self.message}")


def invalid_property(name: str, value: object, reason: str) -> ServiceError:
    return ServiceError(
        400,
        "InvalidPropertyValue",
        values={"PropertyName": name, "PropertyValue": str(value), "Reason": reason},
    )


def missing_property(name: str) -> ServiceError:
    return ServiceError(400, "MissingRequiredProperty", values={"PropertyName": name})


def invalid_query(
    name: str, value: str, reason: str, code: str = "InvalidQueryParameterValue"
) -> ServiceError:
    return ServiceError(
        400, code, values={"QueryParameterName": name, "QueryParameterValue": value, "Reason": reason}
    )


def error_json(
    code: str, message: str, values: Mapping[str, str], base_url: str, request_id: str
) -> dict[str, Any]:
    """The JSON of an error, for a whole response or for one task of a collection."""
    body: dict[str, Any] = {
        "odata.metadata": f"{base_url}/{ERROR_METADATA}",
        "code": code,
        "message": {"lang": "en-US", "value": f"{message}\nRequestId:{request_id}\nTime:{fmt_time(now())}"},
    }
    if values:
        body["values"] = [{"key": k, "value": v} for k, v in values.items()]
    return body


def message_text(value: str) -> str:
    """The first line of a service message: the part without RequestId and Time."""
    return value.split("\n", 1)[0]


def json_response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        status,
        {"Content-Type": JSON_TYPE, **(headers or {})},
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def new_request_id() -> str:
    return str(uuid.uuid4())


def check_id(kind: str, value: object) -> str:
    """A pool, job or task id: 1 to 64 letters, digits, hyphens or underscores."""
    if value is None:
        raise missing_property("id")
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise invalid_property(
            "id",
            value,
            f"The {kind} id can contain any combination of alphanumeric characters including hyphens and "
            "underscores, and cannot contain more than 64 characters.",
        )
    return value


# ---- times and durations ----------------------------------------------------------------------


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def fmt_time(t: datetime.datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as the service writes times: 2025-06-01T12:00:00.123Z."""
    return (
        t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    )


def rfc1123(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


_NUM = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"P(?:{_NUM}W)?(?:{_NUM}D)?(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?")
UNLIMITED = datetime.timedelta(days=10675199, hours=2, minutes=48, seconds=5, microseconds=477580)
UNLIMITED_WIRE = "P10675199DT2H48M5.4775807S"  # what the service reports for "no limit"


def parse_duration(name: str, value: object) -> datetime.timedelta:
    """An ISO 8601 duration as the SDK sends it ("PT15M", "PT02.5S", "P1D")."""
    m = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if m is None or value in ("P", "PT") or (isinstance(value, str) and value.endswith("T")):
        raise invalid_property(name, value, "The value is not a valid ISO 8601 duration.")
    weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return datetime.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def fmt_duration(d: datetime.timedelta) -> str:
    if d >= UNLIMITED:
        return UNLIMITED_WIRE
    seconds = d.total_seconds()
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{int(days)}D" if days else "")
    time_part = (f"{int(hours)}H" if hours else "") + (f"{int(minutes)}M" if minutes else "")
    time_part += f"{secs:g}S" if secs else ""
    return out + ("T" + time_part if time_part else ("" if days else "T0S"))
