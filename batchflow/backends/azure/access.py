"""Whether batchflow can use the Batch account at all, asked before anything is uploaded or created:
one request that any role able to run batchflow may make, and its refusals worded for the person
who must fix the credentials or the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from azure.batch import BatchClient
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from batchflow.backends.azure.errors import NO_ANSWER, batch_error, describe
from batchflow.backends.azure.submit import TRANSIENT_STATUS
from batchflow.errors import ConfigurationError


def check_reachable(client: BatchClient, where: str, count: Callable[[str], None]) -> None:
    """List at most one pool. A wrong key (403 AuthenticationFailed), a refused token (401), or an
    endpoint that is not a Batch account (404, no answer) raises ConfigurationError; a service that
    is not answering (408, 429, 5xx) raises BatchflowError. `where` names the endpoint in messages."""
    count("list_pools")
    try:
        next(iter(client.list_pools(max_results=1, select=["id"], retry_total=1)), None)
    except ClientAuthenticationError as e:  # 401, or no token at all (Entra ID sign-in failed)
        raise ConfigurationError(
            f"Azure Batch at {where} refused the credentials, or none could be had: {describe(e)} "
            "(shared key: set AZURE_BATCH_ACCOUNT and AZURE_BATCH_ACCESS_KEY; Entra ID: sign in, "
            "e.g. `az login`, and check the identity's role on the account)"
        ) from None
    except HttpResponseError as e:
        if e.status_code in (401, 403):
            raise ConfigurationError(
                f"Azure Batch at {where} refused the credentials: {describe(e)} (check "
                "AZURE_BATCH_ACCOUNT and AZURE_BATCH_ACCESS_KEY, or the identity's role on the account)"
            ) from None
        if e.status_code in TRANSIENT_STATUS:
            raise batch_error(f"Azure Batch at {where} is not answering", e) from None
        raise ConfigurationError(
            f"{where} does not answer as an Azure Batch account: {describe(e)} (check AZURE_BATCH_ENDPOINT)"
        ) from None
    except NO_ANSWER as e:
        raise ConfigurationError(
            f"cannot reach Azure Batch at {where}: {describe(e)} (check AZURE_BATCH_ENDPOINT)"
        ) from None
