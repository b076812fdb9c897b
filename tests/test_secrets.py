"""Secrets in the user's environment stay there: local tasks get a node's environment, not yours;
whatever looks like a credential in the environment is redacted from what batchflow prints and
writes; and a var never reads a credential (its value would end up in task command lines).

Every run here is a real `batchflow run` with real /bin/sh subprocesses, the secrets real
environment variables of this process.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import WriteWorkflow

from batchflow.cli import main
from batchflow.events import Info
from batchflow.model import TaskResult, TaskState
from batchflow.redact import redact
from batchflow.report import JsonLinesReporter
from batchflow.state import (
    JOURNAL_FILE,
    RecordState,
    RunState,
    RunStatus,
    TaskJournal,
    TaskRecord,
    read_journal,
)

# Shaped like the real thing: a Batch shared key, an Entra client secret, a storage account key, a PAT.
SECRETS = {
    "AZURE_BATCH_ACCESS_KEY": "bAtChSharedKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP+/==",
    "AZURE_CLIENT_SECRET": "Xy7~Q8r.clientSecretValue_0123456789-abcdef",
    "AZURE_STORAGE_KEY": "StorageAccountKey9876543210zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPO+/==",
    "MY_TOKEN": "ghp_myPersonalAccessToken0123456789abcd",
}
# What a local task may see besides AZ_BATCH_*, its own environment and pass_env; the last three
# are the shell's own (/bin/sh sets PWD; bash as sh also sets SHLVL and _).
BASE = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PWD", "SHLVL", "_"}
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The secrets exported, plus a few ordinary variables; batchflow's crash log kept in tmp_path."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MY_SETTING", "passed through on purpose")
    monkeypatch.setenv("UNRELATED_THING", "not for tasks")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return SECRETS


def env_of(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := ENV_LINE.match(line))}


def files_holding(root: Path, values: Iterable[str]) -> list[str]:
    """Every file under `root` whose bytes contain one of `values` (named by the value's first 8 chars)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path}: {v[:8]}..." for v in values if v.encode() in data]
    return found


def run_folder(wf: Path) -> Path:
    (folder,) = [p for p in (wf.parent / ".batchflow" / "runs").iterdir() if p.is_dir()]
    return folder


# ---- 1. local tasks get a node's environment --------------------------------------------------


def test_local_tasks_and_start_task_see_a_node_environment_not_yours(
    write_workflow: WriteWorkflow, exported: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "env",
        inputs=1,
        tasks={"environment": {"GREETING": "hello from the workflow"}},
        extra={
            "local": {
                "pass_env": ["MY_SETTING", "NOT_SET_ANYWHERE"],
                "start_task": {"command": "env", "environment": {"STAGE": "start"}},
            }
        },
    )

    assert main(["run", str(wf)]) == 0

    out, err = capsys.readouterr()
    folder = run_folder(wf)
    stdout = RunState.load(folder).tasks["task-item-01"].stdout  # where the run keeps the task's log
    assert stdout is not None
    task = env_of((folder / stdout).read_text(encoding="utf-8"))
    start = env_of((folder / "start-task" / "node-0" / "stdout.txt").read_text(encoding="utf-8"))
    for seen, own in ((task, {"GREETING": "hello from the workflow"}), (start, {"STAGE": "start"})):
        for name in SECRETS:
            assert name not in seen
        assert "UNRELATED_THING" not in seen and "NOT_SET_ANYWHERE" not in seen
        assert seen["MY_SETTING"] == "passed through on purpose"  # local.pass_env
        assert {k: seen[k] for k in own} == own
        assert (seen["LANG"], seen["LC_TIME"], seen["TZ"]) == ("C.UTF-8", "C", "UTC")
        assert seen["AZ_BATCH_POOL_ID"] == "TestPool"
        assert seen["AZ_BATCH_NODE_SHARED_DIR"].endswith(f"/nodes/{seen['AZ_BATCH_NODE_ID']}/shared")
        extra = {k for k in seen if k not in BASE | own.keys() and not k.startswith(("AZ_BATCH_", "LC_"))}
        assert extra == {"MY_SETTING"}
    assert task["AZ_BATCH_TASK_ID"] == "task-item-01"
    assert task["AZ_BATCH_JOB_ID"] == "TestJob"
    assert task["AZ_BATCH_TASK_WORKING_DIR"].endswith("/task-item-01/wd")
    assert files_holding(wf.parent, SECRETS.values()) == []
    assert not any(v in out + err for v in SECRETS.values())


def test_a_failing_task_printing_its_environment_leaks_no_secret(
    write_workflow: WriteWorkflow,
    exported: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    shown = " ".join(f'"${name}"' for name in SECRETS)
    wf = write_workflow(f"env; env >&2; printf '%s\\n' {shown} >&2; exit 3", inputs=2)

    assert main(["run", str(wf)]) == 1
    # `status` shows the failed tasks' stderr too (its exit code is not what this test is about).
    assert main(["status", "--workflow", str(wf)]) in (0, 1)
    assert main(["status", "--workflow", str(wf), "--output", "json"]) in (0, 1)

    out, err = capsys.readouterr()
    assert "Task task-item-01 failed (exit code 3, 1 attempt(s))" in err
    for value in SECRETS.values():
        assert value not in out and value not in err
    folder = run_folder(wf)
    assert (folder / "batchflow.log").is_file()
    assert (folder / "tasks" / "task-item-02" / "stderr.txt").is_file()
    # The run folder, the workspace, the logs (the run's and the crash log's folder) hold none.
    assert files_holding(tmp_path, SECRETS.values()) == []


# ---- 2. redaction covers every credential-like variable of the environment --------------------


def test_redact_hides_the_value_of_every_credential_like_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    redacted = {
        "MY_TOKEN": "tok-0123456789",
        "DB_PASSWORD": "hunter2hunter2",
        "SERVICE_PASSWD": "pa55w0rd!",
        "PAYMENT_API_KEY": "pk_live_abcdef",
        "STRIPE_SECRET": "sk_abcdefgh",
        "REQUEST_SIGNATURE": "c2lnbmF0dXJl",
        "SHARED_SAS": "sv=2022&sr=c",
        "SERVICE_CREDENTIAL": "cred-value-1",
        "DB_CONNECTION_STRING": "Server=db;User=sa",
        "AzureClientSecret": "camelCaseSecret",
        "ACCOUNT_KEY2": "second-key-value",
        "GPG_PASSPHRASE": "correct horse battery",
        "SIX_TOKEN": "abcdef",
    }
    kept = {
        "DEBUG_TOKEN": "1",  # boolean-ish values would redact "1" everywhere
        "USE_KEY": "true",
        "FEATURE_SECRET": "disabled",
        "SHORT_SECRET": "ab12x",  # under 6 characters
        "KEYFRAME_INTERVAL": "keyframes-250000",  # not a credential name
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEID",  # an id, not the key
        "PWD": "/home/someone/project",  # the shell's working directory, not a password
    }
    for name, value in {**redacted, **kept}.items():
        monkeypatch.setenv(name, value)
    text = "\n".join(f"{name} is {value}." for name, value in {**redacted, **kept}.items())

    clean = redact(text)

    expected = [f"{n} is REDACTED." for n in redacted] + [f"{n} is {v}." for n, v in kept.items()]
    assert clean.splitlines() == expected
    monkeypatch.delenv("MY_TOKEN")
    assert redact("tok-0123456789") == "tok-0123456789"  # read from the environment as it is now


def test_a_secret_passed_to_a_task_is_redacted_from_batchflow_output(
    write_workflow: WriteWorkflow, exported: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    token = exported["MY_TOKEN"]
    wf = write_workflow(
        'echo "token is $MY_TOKEN" >&2; exit 1', inputs=1, extra={"local": {"pass_env": ["MY_TOKEN"]}}
    )

    assert main(["run", str(wf)]) == 1

    out, err = capsys.readouterr()
    assert "    | token is REDACTED" in err.splitlines()
    assert token not in out + err
    folder = run_folder(wf)
    assert files_holding(folder, [token]) == [f"{folder}/tasks/task-item-01/stderr.txt: {token[:8]}..."]
    # The task's own stderr is kept as the task wrote it; batchflow's state and log are not.
    task_stderr = (folder / "tasks" / "task-item-01" / "stderr.txt").read_text(encoding="utf-8")
    assert task_stderr == f"token is {token}\n"


# ---- 2b. JSON is redacted value by value, never as dumped text -----------------------------------

# A secret whose JSON form is not its raw text: json.dumps writes "p\u00e4ssw\u00f6rd1".
UMLAUT_SECRET = "pässwörd1"  # noqa: S105 (a made-up secret, for the test)


def test_a_json_line_stays_json_and_hides_a_secret_json_would_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's reproduction: `sig=` in a message holding quotes took the backslash of an
    escaped quote with it (an unreadable line), and a non-ASCII secret, escaped, was never matched."""
    monkeypatch.setenv("MY_PASSWORD", UMLAUT_SECRET)
    stream = io.StringIO()
    reporter = JsonLinesReporter(stream)
    reporter.emit(Info('{"url": "https://h/c?sv=1&sig=abc"}'))
    reporter.emit(Info(f"login with {UMLAUT_SECRET} refused"))

    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first == {"event": "info", "message": '{"url": "https://h/c?sv=1&sig=REDACTED"}'}
    assert second == {"event": "info", "message": "login with REDACTED refused"}
    assert "abc" not in stream.getvalue() and "w\\u00f6rd1" not in stream.getvalue()


def test_a_journal_line_quoting_a_signed_url_reads_back_as_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_PASSWORD", UMLAUT_SECRET)
    state = RunState.create(tmp_path / "ws", tmp_path / "wf.yaml", "local", "20261201-000000-000-aaaaaa")
    journal = TaskJournal(state.folder)
    journal.task_started("t1", 1, 100.0)
    journal.task_ended(
        TaskResult(
            "t1", TaskState.FAILED, 1, 1, 100.0, 101.0, failure=f'GET "https://h/c?sig=abc" {UMLAUT_SECRET}'
        )
    )

    record = read_journal(state.folder)["t1"]
    assert (record.state, record.failure) == (RecordState.FAILED, 'GET "https://h/c?sig=REDACTED" REDACTED')
    assert UMLAUT_SECRET.encode() not in (state.folder / JOURNAL_FILE).read_bytes()


def test_state_json_and_json_output_hide_a_secret_json_would_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = tmp_path / "ws"
    state = RunState.create(workspace, tmp_path / "wf.yaml", "local", "20261201-000000-000-aaaaaa")
    state.status, state.ended_at, state.task_count = RunStatus.FAILED, 200.0, 1
    failure = f'GET "https://h/c?sig=abc" refused \\ {UMLAUT_SECRET}'
    state.tasks["t1"] = TaskRecord(RecordState.FAILED, exit_code=1, failure=failure)
    state.message = f"stopped: {UMLAUT_SECRET}"
    monkeypatch.setenv("MY_PASSWORD", UMLAUT_SECRET)
    state.save()

    saved = RunState.load(state.folder)
    assert saved.tasks["t1"].failure == 'GET "https://h/c?sig=REDACTED" refused \\ REDACTED'
    assert saved.message == "stopped: REDACTED"

    # A secret batchflow's environment holds now, not when the state was saved: --output json hides it.
    monkeypatch.delenv("MY_PASSWORD")
    state.save()
    monkeypatch.setenv("MY_PASSWORD", UMLAUT_SECRET)
    assert main(["status", state.run_id, "--workspace", str(workspace), "--output", "json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["tasks"]["t1"]["failure"] == 'GET "https://h/c?sig=REDACTED" refused \\ REDACTED'
    assert shown["message"] == "stopped: REDACTED"


# ---- 3. a var never reads a credential ----------------------------------------------------------

WHY = (
    "looks like a credential: a var's value ends up in task command lines, which Batch shows to anyone "
    "who can read the job; let the task read the secret itself (from a secret store such as Azure Key "
    "Vault; locally, name the variable in local.pass_env) and keep vars and tasks.environment for "
    "values that are not secret"
)


def var_workflow(write_workflow: WriteWorkflow, env: str) -> tuple[Path, int, int]:
    wf = write_workflow("echo {{ vars.k }}", extra={"vars": {"k": {"env": env}}})
    lines = wf.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip() == f"env: {env}")
    return wf, line, lines[line - 1].index(env) + 1


@pytest.mark.parametrize("command", ["plan", "validate"])
def test_a_credential_as_a_var_source_is_refused(
    write_workflow: WriteWorkflow, exported: dict[str, str], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    wf, line, column = var_workflow(write_workflow, "AZURE_STORAGE_KEY")

    assert main([command, str(wf)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{wf}:{line}:{column}: vars.k.env: AZURE_STORAGE_KEY {WHY}",
        "1 problem; nothing was created.",
    ]
    assert main([command, str(wf), "--output", "json"]) == 2
    out, err = capsys.readouterr()
    problems = json.loads(out)["problems"]
    assert [(p["path"], p["line"], p["column"], p["message"]) for p in problems] == [
        ("vars.k.env", line, column, f"AZURE_STORAGE_KEY {WHY}")
    ]
    assert exported["AZURE_STORAGE_KEY"] not in out + err


@pytest.mark.parametrize(
    ("env", "credential"),
    [
        ("MY_TOKEN", True),
        ("AZURE_CLIENT_SECRET", True),
        ("DB_CONNECTION_STRING", True),
        ("REQUEST_SIGNATURE", True),
        ("MY_REGION", False),
        ("PWD", False),
        ("AWS_ACCESS_KEY_ID", False),
    ],
)
def test_vars_and_redaction_share_one_rule(
    write_workflow: WriteWorkflow,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str,
    credential: bool,
) -> None:
    value = "some-long-value-1234"
    monkeypatch.setenv(env, value)
    wf, _, _ = var_workflow(write_workflow, env)

    code = main(["plan", str(wf), "--output", "json"])

    out, err = capsys.readouterr()
    assert (code, redact(f"[{value}]")) == ((2, "[REDACTED]") if credential else (0, f"[{value}]"))
    if credential:
        assert json.loads(out)["problems"][0]["message"].startswith(f"{env} looks like a credential: ")
        assert value not in out + err
    else:
        assert json.loads(out)["tasks"][0]["command"] == f"echo {value}"


def test_pass_env_takes_variable_names(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", extra={"local": {"pass_env": ["HTTPS_PROXY", "not a name"]}})

    assert main(["validate", str(wf)]) == 2

    lines = wf.read_text(encoding="utf-8").splitlines()
    line = lines.index("  - not a name") + 1
    assert capsys.readouterr().err.splitlines() == [
        f"{wf}:{line}:5: local.pass_env[1]: 'not a name' is not a valid environment variable name: "
        "letters, digits and underscores, not starting with a digit",
        "1 problem; nothing was created.",
    ]
