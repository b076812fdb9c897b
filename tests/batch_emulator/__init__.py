"""An Azure Batch service emulator for tests: the real azure-batch SDK talks to it through azure-core's
transport seam (or a loopback HTTP server), and it runs tasks for real on this machine.

    with BatchEmulator(workdir=tmp_path) as emu:          # account "testacct", key DEFAULT_KEY
        client = emu.client(retry_total=0)   # = BatchClient(emu.endpoint, cred, transport=emu.transport())
        emu.faults.fail_next("POST", "/jobs/{job}/addtaskcollection", status=503, count=3)
        emu.faults.retry_after_next("GET", "/jobs/{job}/taskcounts", seconds=1)
        emu.faults.lose_response_next("POST", ".../addtaskcollection")
        emu.fail_start_task("pool", exit_code=100, stderr="E: Unable to locate package ffmpeg\\n")
        emu.fail_allocation("pool", "AccountCoreQuotaReached"); emu.lag_task_counts(1.0)
        emu.override_start_task("pool", "/bin/sh -c '...'")   # a local stand-in for apt-get install
        emu.preempt_node(pool_id, node_id); emu.restore_node(pool_id, node_id)
        emu.make_node_unusable(pool_id, node_id)
        emu.fail_auto_pool("PoolQuotaReached", "...")            # the next auto pool is not created
        emu.advance(seconds)                                     # the service's clock jumps ahead
        emu.requests, emu.count("POST", "/jobs/{job}/addtaskcollection"), emu.sleeps, emu.latency
        emu.paused(), emu.settle(), emu.wait_for(condition), emu.serve() -> "http://127.0.0.1:PORT"

Every service rule emulated here is listed, with its source (a real recorded answer, a REST spec
definition, a Microsoft docs page) or marked as an assumption, in RULES.md beside this file; the
replay suite (tests/test_recorded_replay.py) sends recorded requests and compares the answers.
In short:
- Command lines run WITHOUT a shell (split into words and executed, as Batch does): use /bin/sh -c.
- Errors: the service's codes and bodies; message.value ends with "\\nRequestId:...\\nTime:..." lines
  (message_text() gives the first line). A wrong shared-key signature is 403 AuthenticationFailed
  (HttpResponseError, as recorded); a bad bearer token 401 (ClientAuthenticationError).
- Enum casing as the service answers, not as the spec spells it: Add Task Collection status
  "Success", uploadCondition "TaskCompletion", nodeFillType "Spread"; vmSize lowercased.
- Add Task Collection: more than 100 tasks, or a body of 1 MiB or more -> 413 RequestBodyTooLarge
  (values MaxLimit "1048576") for the whole request; per task, in any order: "Success", or
  clienterror TaskExists (ids ignore case) / InvalidPropertyValue / MissingRequiredProperty.
- Pools read "resizing" until their first resize ends, even with no target node; fail_allocation
  makes a resize end steady with resizeErrors (quota, allocation failure).
- A job whose pool does not exist is accepted; its tasks stay active until the pool exists. A job
  with onAllTasksComplete=terminatejob completes once its tasks are all complete; with no task at all
  it stays active, as recorded. A job past its constraints.maxWallClockTime (from its creation, on
  the service's clock: `advance`) is terminated, MaxWallClockTimeExpiry.
- Auto pools (poolInfo.autoPoolSpecification, poolLifetimeOption job): created with the job, named
  `<autoPoolIdPrefix>_<GUID>` (a bare upper-case GUID without a prefix), the job's
  executionInfo.poolId; with keepAlive false deleted once the job completes (all tasks complete,
  wall clock, terminate) or is deleted.
- Task counts can lag (lag_task_counts); lists are ordered by id and page without rescanning.
- Task failureInfo codes (category usererror): FailureExitCode (nonzero exit, retried up to
  maxTaskRetryCount), TaskEnded (maxWallClockTime: the process group is killed, exit 137; job
  terminated; task terminated), BlobNotFound / BlobAccessDenied / BlobDownloadMiscError (resource
  files, not retried, no exit code), CommandProgramNotFound, FileUploadMiscError (an output upload
  failed, or an output pattern without wildcards matched no file).
- Output files are uploaded after each run of the command whose exit code matches their condition.
- Not emulated, refused with 501 NotImplemented: containers, multi-instance tasks, task
  dependencies, application packages, job manager/preparation/release tasks, and
  autoscale formulas other than literal $TargetDedicatedNodes / $TargetLowPriorityNodes assignments.
"""

from __future__ import annotations

from .emulator import DEFAULT_KEY, MAX_BODY_BYTES, BatchEmulator, RequestRecord
from .faults import Fault, FaultKind, Faults
from .state import AutoPoolFault, StartTaskFault, Timings
from .wire import API_VERSION, MESSAGES, message_text

__all__ = [
    "API_VERSION",
    "DEFAULT_KEY",
    "MAX_BODY_BYTES",
    "MESSAGES",
    "AutoPoolFault",
    "BatchEmulator",
    "Fault",
    "FaultKind",
    "Faults",
    "RequestRecord",
    "StartTaskFault",
    "Timings",
    "message_text",
]
