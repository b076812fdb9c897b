"""Reading enum values in the Batch service's answers: the one place they are compared.

The service does not spell its enums the way its REST spec and the SDK do. Add Task Collection
answers `"status": "Success"` (real recordings at api-version 2025-06-01, Azure/azure-sdk-assets
net/sdk/batch/Azure.Compute.Batch/tests/SessionRecords/BatchTaskIntegrationTests/AddTaskCollection.json,
and the Java TaskTests.testCreateTasks recordings), while the spec's example and the SDK enum say
`success`. The SDK's enums are `str` enums with a case-insensitive *lookup*, but `==` between a str
and a member is plain, case-sensitive str equality, so `"Success" == BatchTaskAddStatus.SUCCESS` is
False. Every comparison of a value the service returned (task-add status, pool/job/task/node
states, allocation state, execution result, error codes) goes through `is_` or `among` instead.
"""

from __future__ import annotations

from collections.abc import Iterable


def is_(value: object, expected: str) -> bool:
    """True when `value`, as the service returned it, names `expected` (an SDK enum member or a
    plain string), whatever the casing. None and non-strings are never a match. (`str(member)` of
    an SDK enum is its qualified name, so the member's own string is read with `str.casefold`.)"""
    return isinstance(value, str) and value.casefold() == str.casefold(expected)


def among(value: object, expected: Iterable[str]) -> bool:
    """True when `value` names any of `expected`, whatever the casing."""
    return isinstance(value, str) and value.casefold() in {str.casefold(e) for e in expected}
