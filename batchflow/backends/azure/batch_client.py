"""A BatchClient for batchflow: credentials from the environment, one transport, no surprise retries.

- Requests go through blob_urls.http_transport (proxies resolved once, a connection pool as large as
  the submitter's concurrency).
- The SDK's own retry policy covers ordinary calls with a short budget (3 retries, backing off from
  1 s): a call that fails for minutes should surface, not hang a run. Task submission and Get Task
  Counts pass retry_total=0 and retry on their own terms (submit, batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.batch import BatchClient

from batchflow.backends.azure.auth import BatchAuth, batch_auth
from batchflow.backends.blob_urls import RetrySettings, http_transport

RETRY = RetrySettings(total=3, initial_backoff=1.0, increment_base=2.0, jitter=0.5)


def batch_client(
    auth: BatchAuth | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    connections: int = 16,
    **kwargs: Any,
) -> BatchClient:
    """A BatchClient on the account named by the environment (see auth.batch_auth). No I/O."""
    auth = auth or batch_auth(environ)
    options: dict[str, Any] = {
        "transport": http_transport(auth.endpoint, RETRY, connections),
        "retry_total": RETRY.total,
        "retry_backoff_factor": RETRY.initial_backoff,
        **kwargs,
    }
    return BatchClient(auth.endpoint, auth.credential(), **options)  # type: ignore[arg-type]
