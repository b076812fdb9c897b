"""Builders: batchflow's model -> the exact JSON azure-batch 15.1 sends to the Batch service."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from azure.batch import models as bm
from batch_bodies import rendered_task, sent_body

from batchflow.backends.azure.batch_build import (
    auto_pool_specification,
    job_request,
    pool_request,
    seal_job_request,
    shell_command_line,
    task_body,
    task_request,
    wire,
)
from batchflow.errors import BatchflowError
from batchflow.model import (
    AutoScaleSpec,
    ImageReference,
    JobSpec,
    OutputCondition,
    PoolSpec,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskOutput,
)
from batchflow.render import shell_quote

UBUNTU = ImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server")
AGENT = "batch.node.ubuntu 24.04"
METADATA = [
    {"name": "batchflow-run-id", "value": "run-20250101-abc"},
    {"name": "batchflow-created-by", "value": "batchflow"},
]
IMAGE_WIRE = {
    "imageReference": {
        "publisher": "canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    },
    "nodeAgentSKUId": AGENT,
}
OUT_URL = "https://acct.blob.core.windows.net/output?sv=2026&sp=cw&sig=abc"
LOG_URL = "https://acct.blob.core.windows.net/logs?sv=2026&sp=cw&sig=def"
HOSTILE_NAMES = [
    "it's $(touch INJECTED).mp4",
    'quote "double" `tick` $HOME.mp4',
    "semi;colon & amp | pipe > gt.mp4",
    "-starts-with-dash.mp4",
    "new\nline\ttab.mp4",
    "back\\slash 'single'' '.mp4",
    "café ünïcode.mp4",
]


# ---- pool -------------------------------------------------------------------------------


def test_pool_with_dedicated_and_spot_nodes_and_an_elevated_start_task() -> None:
    pool = PoolSpec(
        id="LinuxFFmpegPool",
        vm_size="Standard_A1_v2",
        image=UBUNTU,
        node_agent_sku_id=AGENT,
        dedicated_nodes=2,
        spot_nodes=5,
        task_slots_per_node=4,
    )
    start = StartTaskSpec(
        command="apt-get update && apt-get install -y ffmpeg",
        elevated=True,
        wait_for_success=True,
        max_retries=2,
        environment={"DEBIAN_FRONTEND": "noninteractive", "B": "2"},
    )
    setup = ResolvedFile("https://acct.blob.core.windows.net/input/setup.sh?sig=x", "tools/setup.sh")

    request = pool_request(pool, start, [setup], "run-20250101-abc")

    assert isinstance(request, bm.BatchPoolCreateOptions)
    assert wire(request) == {
        "id": "LinuxFFmpegPool",
        "vmSize": "Standard_A1_v2",
        "virtualMachineConfiguration": IMAGE_WIRE,
        "taskSlotsPerNode": 4,
        "startTask": {
            "commandLine": "/bin/sh -c 'apt-get update && apt-get install -y ffmpeg'",
            "resourceFiles": [
                {
                    "httpUrl": "https://acct.blob.core.windows.net/input/setup.sh?sig=x",
                    "filePath": "tools/setup.sh",
                }
            ],
            "environmentSettings": [
                {"name": "DEBIAN_FRONTEND", "value": "noninteractive"},
                {"name": "B", "value": "2"},
            ],
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
            "maxTaskRetryCount": 2,
            "waitForSuccess": True,
        },
        "metadata": METADATA,
        "enableAutoScale": False,
        "targetDedicatedNodes": 2,
        "targetLowPriorityNodes": 5,
        "resizeTimeout": "PT15M00S",
    }
    assert sent_body(request) == wire(request)


def test_autoscale_pool_has_no_fixed_targets_and_a_non_admin_start_task() -> None:
    formula = "$TargetDedicatedNodes = min(10, $PendingTasks.GetSample(1));"
    pool = PoolSpec(
        id="AutoPool",
        vm_size="Standard_D2s_v3",
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server", "24.04.202501010"),
        node_agent_sku_id=AGENT,
        dedicated_nodes=3,  # ignored: the formula decides
        autoscale=AutoScaleSpec(formula=formula, evaluation_interval=450.0),
    )
    start = StartTaskSpec(command='mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin"', wait_for_success=False)

    request = pool_request(pool, start, [], "run-20250101-abc")

    assert wire(request) == {
        "id": "AutoPool",
        "vmSize": "Standard_D2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {
                "publisher": "canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "24.04.202501010",
            },
            "nodeAgentSKUId": AGENT,
        },
        "taskSlotsPerNode": 1,
        "startTask": {
            "commandLine": """/bin/sh -c 'mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin"'""",
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
            "maxTaskRetryCount": 0,
            "waitForSuccess": False,
        },
        "metadata": METADATA,
        "enableAutoScale": True,
        "autoScaleFormula": formula,
        "autoScaleEvaluationInterval": "PT07M30S",
    }


def test_pool_without_start_task() -> None:
    pool = PoolSpec(id="P", vm_size="Standard_A1_v2", image=UBUNTU, node_agent_sku_id=AGENT, spot_nodes=1)

    assert wire(pool_request(pool, None, [], "run-20250101-abc")) == {
        "id": "P",
        "vmSize": "Standard_A1_v2",
        "virtualMachineConfiguration": IMAGE_WIRE,
        "taskSlotsPerNode": 1,
        "metadata": METADATA,
        "enableAutoScale": False,
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 1,
        "resizeTimeout": "PT15M00S",
    }


# ---- job --------------------------------------------------------------------------------


def test_job_does_nothing_when_all_tasks_complete_until_sealed() -> None:
    request = job_request(
        JobSpec(id="LinuxFFmpegJob", max_wall_clock=1800.0, max_task_retries=3), "Pool", "run-20250101-abc"
    )

    assert isinstance(request, bm.BatchJobCreateOptions)
    assert wire(request) == {
        "id": "LinuxFFmpegJob",
        "poolInfo": {"poolId": "Pool"},
        "onAllTasksComplete": "noaction",
        "constraints": {"maxWallClockTime": "PT30M00S", "maxTaskRetryCount": 3},
        "metadata": METADATA,
    }
    assert sent_body(request) == wire(request)


def test_job_without_wall_clock_sends_no_wall_clock() -> None:
    request = job_request(JobSpec(id="J"), "P", "run-20250101-abc")

    assert wire(request)["constraints"] == {"maxTaskRetryCount": 0}


def test_the_default_wall_clock_applies_only_when_the_workflow_gives_none() -> None:
    derived = job_request(JobSpec(id="J"), "P", "run-20250101-abc", default_wall_clock=4800.0)
    given = job_request(
        JobSpec(id="J", max_wall_clock=600.0), "P", "run-20250101-abc", default_wall_clock=4800.0
    )

    assert wire(derived)["constraints"] == {"maxWallClockTime": "PT01H20M00S", "maxTaskRetryCount": 0}
    assert wire(given)["constraints"] == {"maxWallClockTime": "PT10M00S", "maxTaskRetryCount": 0}


def test_a_job_on_an_auto_pool_carries_the_pool_batch_deletes_with_it() -> None:
    pool = PoolSpec(
        id="LinuxFFmpegPool", vm_size="Standard_A1_v2", image=UBUNTU, node_agent_sku_id=AGENT, spot_nodes=5
    )
    start = StartTaskSpec(command="apt-get install -y ffmpeg", elevated=True)
    files = [ResolvedFile("https://acct.blob.core.windows.net/input/setup.sh?sig=x", "setup.sh")]
    auto = auto_pool_specification(pool, start, files, "run-20250101-abc")
    request = job_request(JobSpec(id="LinuxFFmpegJob"), auto, "run-20250101-abc", default_wall_clock=4800.0)

    named = wire(pool_request(pool, start, files, "run-20250101-abc"))
    del named["id"]  # the rest of the pool is exactly the named pool's, its metadata included
    assert wire(request) == {
        "id": "LinuxFFmpegJob",
        "poolInfo": {
            "autoPoolSpecification": {
                "autoPoolIdPrefix": "LinuxFFmpegPool",
                "poolLifetimeOption": "job",
                "keepAlive": False,
                "pool": named,
            }
        },
        "onAllTasksComplete": "noaction",
        "constraints": {"maxWallClockTime": "PT01H20M00S", "maxTaskRetryCount": 0},
        "metadata": METADATA,
    }
    assert named["metadata"] == METADATA
    assert sent_body(request) == wire(request)


def test_an_auto_pool_id_prefix_is_the_pool_id_cut_to_20_characters() -> None:
    pool = PoolSpec(
        id="A" * 30 + "-pool", vm_size="V", image=UBUNTU, node_agent_sku_id=AGENT, dedicated_nodes=1
    )

    assert wire(auto_pool_specification(pool, None, [], "r"))["autoPoolIdPrefix"] == "A" * 20


def test_seal_switches_the_job_to_terminate_when_its_tasks_complete() -> None:
    request = seal_job_request()

    assert isinstance(request, bm.BatchJobUpdateOptions)
    assert wire(request) == {"onAllTasksComplete": "terminatejob"}


# ---- tasks ------------------------------------------------------------------------------


def test_task_with_inputs_outputs_per_condition_logs_environment_and_constraints() -> None:
    task = rendered_task(
        outputs=(
            TaskOutput("sample 1.mp3", "output", "runs/r1/sample 1.mp3", OutputCondition.SUCCESS),
            TaskOutput("debug/*.log", "logs", "runs/r1/debug/", OutputCondition.FAILURE),
            TaskOutput("**/*.json", "output", "", OutputCondition.COMPLETION),
        ),
        environment={"BITRATE": "128k", "EMPTY": ""},
        max_retries=2,
        max_wall_clock=600.0,
    )
    inputs = [ResolvedFile("https://acct.blob.core.windows.net/input/sample%201.mp4?sig=r", "sample 1.mp4")]

    request = task_request(task, inputs, {"output": OUT_URL, "logs": LOG_URL}, LOG_URL, "runs/r1/tasks/")

    assert isinstance(request, bm.BatchTaskCreateOptions)
    assert wire(request) == {
        "id": "task-sample_1",
        "commandLine": "/bin/sh -c 'ffmpeg -i '\\''sample 1.mp4'\\'' ./'\\''sample 1.mp3'\\'''",
        "resourceFiles": [
            {
                "httpUrl": "https://acct.blob.core.windows.net/input/sample%201.mp4?sig=r",
                "filePath": "sample 1.mp4",
            }
        ],
        "outputFiles": [
            {
                "filePattern": "sample 1.mp3",
                "destination": {"container": {"containerUrl": OUT_URL, "path": "runs/r1/sample 1.mp3"}},
                "uploadOptions": {"uploadCondition": "tasksuccess"},
            },
            {
                "filePattern": "debug/*.log",
                "destination": {"container": {"containerUrl": LOG_URL, "path": "runs/r1/debug"}},
                "uploadOptions": {"uploadCondition": "taskfailure"},
            },
            {
                "filePattern": "**/*.json",
                "destination": {"container": {"containerUrl": OUT_URL}},
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            },
            {
                "filePattern": "../stdout.txt",
                "destination": {
                    "container": {"containerUrl": LOG_URL, "path": "runs/r1/tasks/task-sample_1/stdout.txt"}
                },
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            },
            {
                "filePattern": "../stderr.txt",
                "destination": {
                    "container": {"containerUrl": LOG_URL, "path": "runs/r1/tasks/task-sample_1/stderr.txt"}
                },
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            },
        ],
        "environmentSettings": [{"name": "BITRATE", "value": "128k"}, {"name": "EMPTY", "value": ""}],
        "constraints": {"maxWallClockTime": "PT10M00S", "retentionTime": "P1D", "maxTaskRetryCount": 2},
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
    }
    assert sent_body(request) == wire(request)


def test_minimal_task_without_logs_sends_only_what_it_has() -> None:
    task = rendered_task(id="t", command="true", inputs=())

    assert wire(task_request(task, [], {}, None, "ignored/")) == {
        "id": "t",
        "commandLine": "/bin/sh -c 'true'",
        "constraints": {"retentionTime": "P1D", "maxTaskRetryCount": 0},
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
    }


def test_retention_can_be_chosen() -> None:
    task = rendered_task(inputs=())
    request = task_request(task, [], {}, None, "", retention=datetime.timedelta(days=7))

    assert wire(request)["constraints"] == {"retentionTime": "P7D", "maxTaskRetryCount": 0}


def test_an_escaped_file_name_is_uploaded_into_the_folder_of_its_blob_name() -> None:
    # `a[[]1].mp3` matches only `a[1].mp3`, but Batch sees brackets as wildcards: path is a folder.
    outputs = (
        TaskOutput("a[[]1].mp3", "output", "runs/r1/a[1].mp3", OutputCondition.SUCCESS),
        TaskOutput("sub/b[*].mp3", "output", "b*.mp3", OutputCondition.SUCCESS),
    )
    request = task_request(rendered_task(outputs=outputs, inputs=()), [], {"output": OUT_URL}, None, "")

    assert [f["destination"]["container"] for f in wire(request)["outputFiles"]] == [
        {"containerUrl": OUT_URL, "path": "runs/r1"},
        {"containerUrl": OUT_URL},
    ]


def test_an_escaped_file_name_cannot_be_renamed() -> None:
    outputs = (TaskOutput("a[[]1].mp3", "output", "renamed.mp3", OutputCondition.SUCCESS),)

    with pytest.raises(BatchflowError) as e:
        task_request(rendered_task(outputs=outputs, inputs=()), [], {"output": OUT_URL}, None, "")

    assert str(e.value) == (
        "output 'a[[]1].mp3' cannot be uploaded as 'renamed.mp3' on Azure Batch: a pattern with [ ] keeps"
        " its file name ('a[1].mp3'); give the output a destination folder ending in '/'"
    )


def test_an_output_container_without_url_is_a_bug() -> None:
    outputs = (TaskOutput("x.mp3", "elsewhere", "x.mp3", OutputCondition.SUCCESS),)

    with pytest.raises(KeyError, match="no container URL for output container 'elsewhere'"):
        task_request(rendered_task(outputs=outputs), [], {"output": OUT_URL}, None, "")


def built_with_models(
    task: RenderedTask,
    inputs: list[ResolvedFile],
    urls: dict[str, str],
    log_url: str | None,
    log_prefix: str,
    retention: datetime.timedelta,
) -> bm.BatchTaskCreateOptions:
    """The Add Task request as batchflow built it from SDK models before task_body (issue 12)."""
    conditions = {
        OutputCondition.SUCCESS: bm.OutputFileUploadCondition.TASK_SUCCESS,
        OutputCondition.FAILURE: bm.OutputFileUploadCondition.TASK_FAILURE,
        OutputCondition.COMPLETION: bm.OutputFileUploadCondition.TASK_COMPLETION,
    }

    def upload(pattern: str, url: str, path: str, condition: OutputCondition) -> bm.OutputFile:
        return bm.OutputFile(
            file_pattern=pattern,
            destination=bm.OutputFileDestination(
                container=bm.OutputFileBlobContainerDestination(container_url=url, path=path or None)
            ),
            upload_options=bm.OutputFileUploadConfiguration(upload_condition=conditions[condition]),
        )

    paths = {"a.mp3": "runs/a.mp3", "d/*.log": "runs/d", "**/*.json": "", "a[[]1].mp3": "runs/r"}
    outputs = [upload(o.pattern, urls[o.container], paths[o.pattern], o.condition) for o in task.outputs]
    if log_url is not None:
        for name in ("stdout.txt", "stderr.txt"):
            outputs.append(
                upload(f"../{name}", log_url, f"{log_prefix}{task.id}/{name}", OutputCondition.COMPLETION)
            )
    wall_clock = task.max_wall_clock
    return bm.BatchTaskCreateOptions(
        id=task.id,
        command_line=shell_command_line(task.command),
        resource_files=[bm.ResourceFile(http_url=f.http_url, file_path=f.file_path) for f in inputs] or None,
        output_files=outputs or None,
        environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in task.environment.items()]
        or None,
        constraints=bm.BatchTaskConstraints(
            max_wall_clock_time=None if wall_clock is None else datetime.timedelta(seconds=wall_clock),
            retention_time=retention,
            max_task_retry_count=task.max_retries,
        ),
        user_identity=bm.UserIdentity(
            auto_user=bm.AutoUserSpecification(
                scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.NON_ADMIN
            )
        ),
    )


@pytest.mark.parametrize("i", range(36))
def test_task_body_is_the_json_the_sdk_sends_for_the_model_built_request(i: int) -> None:
    # The same request built from SDK models: the same bytes on the wire, key order included.
    shapes = [
        ("a.mp3", "runs/a.mp3"),
        ("d/*.log", "runs/d/"),
        ("**/*.json", ""),
        ("a[[]1].mp3", "runs/r/a[1].mp3"),
    ]
    conditions = list(OutputCondition)
    outputs = tuple(
        TaskOutput(pattern, "output", dest, conditions[(i + k) % 3])
        for k, (pattern, dest) in enumerate(shapes[: i % 5])
    )
    task = rendered_task(
        id=f"t-{i}",
        command=f"echo 'it''s' {i} ü",
        outputs=outputs,
        environment={f"K{j}": "vé'\"" * j for j in range(i % 4)},
        max_retries=i % 3,
        max_wall_clock=[None, 600.0, 600.5, 86400.0 * 3, 59.999999, 3723.0][i % 6],
    )
    inputs = [ResolvedFile(f"https://a/in/c{j}%20x?sig=r", f"in {j}/é.mp4") for j in range(i % 3)]
    log_url = LOG_URL if i % 2 else None
    retention = datetime.timedelta(days=7) if i % 5 == 0 else datetime.timedelta(days=1)
    urls = {"output": OUT_URL}

    body = task_body(task, inputs, urls, log_url, "runs/r1/tasks/", retention=retention)
    model = built_with_models(task, inputs, urls, log_url, "runs/r1/tasks/", retention)

    assert json.dumps(body) == json.dumps(sent_body(model))
    assert json.dumps(body) == json.dumps(
        wire(task_request(task, inputs, urls, log_url, "runs/r1/tasks/", retention=retention))
    )


# ---- command lines: what the node runs -----------------------------------------------------


def run_like_a_node(command_line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Batch splits the command line into words and runs them without a shell; here a POSIX shell
    does the splitting, the strictest reading of that."""
    env = {"PATH": os.environ["PATH"], "AZ_HOME_PROBE": "from env"}
    return subprocess.run(
        ["/bin/sh", "-c", command_line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["task", "start task"])
def test_hostile_file_names_survive_both_levels_of_quoting(tmp_path: Path, kind: str) -> None:
    # The rendered command quotes every value (render.shell_quote), then the builder quotes the
    # whole command for `/bin/sh -c`: the program must get every name as one untouched argument.
    argv_printer = "import json, sys; print(json.dumps(sys.argv[1:]))"
    command = " ".join([shell_quote(sys.executable), "-c", shell_quote(argv_printer)])
    command += " " + " ".join(shell_quote(n) for n in HOSTILE_NAMES) + ' "$AZ_HOME_PROBE"'
    if kind == "task":
        line = wire(task_request(rendered_task(command=command, inputs=()), [], {}, None, ""))["commandLine"]
    else:
        pool = PoolSpec(id="P", vm_size="v", image=UBUNTU, node_agent_sku_id=AGENT)
        line = wire(pool_request(pool, StartTaskSpec(command=command), [], "r"))["startTask"]["commandLine"]

    assert line == shell_command_line(command)
    assert shlex.split(line) == ["/bin/sh", "-c", command]
    result = run_like_a_node(line, tmp_path)
    assert json.loads(result.stdout) == [*HOSTILE_NAMES, "from env"]
    assert list(tmp_path.iterdir()) == []  # nothing like $(touch INJECTED) ran


def test_a_command_with_single_quotes_and_shell_syntax_runs_as_written(tmp_path: Path) -> None:
    command = "echo 'it'\"'\"'s' && printf '%s\\n' \"$((1 + 2))\" > 'out file.txt'; cat 'out file.txt'"

    result = run_like_a_node(shell_command_line(command), tmp_path)

    assert result.stdout == "it's\n3\n"
    assert (tmp_path / "out file.txt").read_text() == "3\n"
