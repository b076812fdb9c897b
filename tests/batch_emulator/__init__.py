"""An Azure Batch service emulator for tests: the real azure-batch SDK talks to it through azure-core's
transport seam (or a loopback HTTP server), and it runs tasks for real on this machine.

See emulator.BatchEmulator for the entry point; faults.Faults for fault injection.
"""

from __future__ import annotations

from .emulator import DEFAULT_KEY, MAX_BODY_BYTES, BatchEmulator, RequestRecord
from .faults import Fault, FaultKind, Faults
from .state import StartTaskFault, Timings
from .wire import API_VERSION, MESSAGES, message_text

__all__ = [
    "API_VERSION",
    "DEFAULT_KEY",
    "MAX_BODY_BYTES",
    "MESSAGES",
    "BatchEmulator",
    "Fault",
    "FaultKind",
    "Faults",
    "RequestRecord",
    "StartTaskFault",
    "Timings",
    "message_text",
]
