"""The workflow file format: schema, YAML reading, messages with line:col, and the built Workflow.

Every error test checks the exact line a person would read, position included.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from batchflow.backends import registry
from batchflow.backends.azure import AzureSettings
from batchflow.backends.local import LocalSettings
from batchflow.backends.local import settings_of as local_settings
from batchflow.credentials import looks_like_credential_name
from batchflow.errors import InvalidWorkflow
from batchflow.model import (
    AutoScaleSpec,
    CleanupAction,
    CleanupSpec,
    DownloadSpec,
    ForeachSpec,
    ImageReference,
    JobSpec,
    LogSpec,
    MonitorSpec,
    OutputCondition,
    OutputSpec,
    PoolSpec,
    ResourceFileSpec,
    StartTaskSpec,
    TaskTemplate,
    UploadSpec,
    Workflow,
)
from batchflow.spec import (
    CORE_SCHEMA_FILE,
    load_workflow,
    parse_duration,
    schema,
    schema_text,
    validate_document,
)

ROOT = Path(__file__).resolve().parent.parent
ADVICE = 'credentials never go in the workflow file; set them in the environment (see README "Credentials")'

# Line numbers matter: error tests below edit single lines of this text.
MINIMAL = """\
version: 1
name: demo
storage:
  containers: [input, output]
pool:
  id: demo-pool
  vm_size: Standard_D2s_v3
  image: {publisher: canonical, offer: ubuntu-24_04-lts, sku: server}
  node_agent_sku_id: batch.node.ubuntu 24.04
job:
  id: demo-job
tasks:
  foreach: {container: input, pattern: "*.txt"}
  command: wc -l {{ input.path }}
"""


def problems(text: str) -> list[str]:
    """The problem lines for `text` as if it were the file wf.yaml."""
    _, _, found = validate_document(text, Path("wf.yaml"))
    return [str(p) for p in found]


def edit(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def load_problems(path: Path, overrides: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidWorkflow) as info:
        load_workflow(path, overrides)
    return [str(p) for p in info.value.problems]


# ---- the schema itself -------------------------------------------------------------------


def test_the_committed_schema_is_the_core_plus_every_backends_block() -> None:
    """schemas/workflow.schema.json (for editors) is what `batchflow schema` composes: the core
    schema, then each registered backend's settings block, in registry order."""
    committed = (ROOT / "schemas" / "workflow.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "run: batchflow schema > schemas/workflow.schema.json"
    core = json.loads(CORE_SCHEMA_FILE.read_text(encoding="utf-8"))
    assert "local" not in core["properties"] and "azure" not in core["properties"]
    assert list(schema()["properties"]) == [*core["properties"], *registry.names()]


def test_schema_is_valid_2020_12() -> None:
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] == "https://batchflow.dev/schemas/workflow-1.json"
    Draft202012Validator.check_schema(s)
    assert schema() is s  # cached


def _objects(node: object, where: str = "$") -> list[tuple[str, dict[str, object]]]:
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((where, node))
        for k, v in node.items():
            found += _objects(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _objects(v, f"{where}/{i}")
    return found


def test_every_property_is_described_and_every_object_is_closed() -> None:
    for where, obj in _objects(schema()):
        assert obj.get("additionalProperties") is False, where
        assert isinstance(obj.get("description"), str), where
        properties = obj["properties"]
        assert isinstance(properties, dict)
        for name, prop in properties.items():
            description = prop.get("description", "")
            assert description.endswith("."), f"{where}/{name}"
            assert len(description) >= 20, f"{where}/{name}"


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_every_workflow_in_the_repo_is_valid(path: Path) -> None:
    data, _, found = validate_document(path.read_text(encoding="utf-8"), path)
    assert [str(p) for p in found] == []
    assert data is not None


# ---- valid workflows -> Workflow ---------------------------------------------------------


def test_reference_workflow_loads(tmp_path: Path) -> None:
    text = (ROOT / "workflows" / "mp4_to_mp3.yaml").read_text(encoding="utf-8")
    (tmp_path / "mp4_to_mp3.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "samples" / "mp4").mkdir(parents=True)
    wf = load_workflow(tmp_path / "mp4_to_mp3.yaml")
    assert wf.name == "mp4-to-mp3"
    assert wf.path == tmp_path / "mp4_to_mp3.yaml"
    assert wf.base_dir == tmp_path
    assert wf.containers == ("input", "output")
    assert wf.uploads == (UploadSpec(tmp_path / "samples" / "mp4", "input", include=("*.mp4",)),)
    assert wf.downloads == (DownloadSpec("output", tmp_path / "out" / "mp3"),)
    assert wf.vars == {"bitrate": "128k"}
    assert wf.job.max_wall_clock == 1800.0
    assert wf.tasks.max_wall_clock == 600.0
    assert wf.pool.start_task is not None and wf.pool.start_task.elevated
    local_start = local_settings(wf).start_task
    assert local_start is not None and not local_start.elevated
    # Positions point at the value node: the `>-` of tasks.command.
    lines = text.splitlines()
    tasks_line = lines.index("tasks:")
    command_line = next(i for i in range(tasks_line, len(lines)) if lines[i].startswith("  command:"))
    assert wf.source is not None
    assert wf.source.positions[("tasks", "command")] == (command_line + 1, 12)
    assert wf.source.key_positions[("tasks", "command")] == (command_line + 1, 3)


def test_minimal_workflow_gets_every_default(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(MINIMAL, encoding="utf-8")
    wf = load_workflow(tmp_path / "wf.yaml")
    assert replace(wf, source=None) == Workflow(
        version=1,
        name="demo",
        path=tmp_path / "wf.yaml",
        base_dir=tmp_path,
        pool=PoolSpec(
            id="demo-pool",
            vm_size="Standard_D2s_v3",
            image=ImageReference("canonical", "ubuntu-24_04-lts", "server", "latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04",
        ),
        job=JobSpec(id="demo-job", max_wall_clock=None, max_task_retries=0),
        tasks=TaskTemplate(foreach=ForeachSpec("input", "*.txt"), command="wc -l {{ input.path }}"),
        containers=("input", "output"),
        logs=LogSpec(container="input", prefix="batchflow-logs/"),
        monitor=MonitorSpec(timeout=1800.0, poll_interval=5.0),
        cleanup=CleanupSpec(),
        settings={"local": LocalSettings(), "azure": AzureSettings()},
    )
    assert wf.source is not None
    assert wf.source.file == tmp_path / "wf.yaml"
    assert wf.source.positions[("pool", "vm_size")] == (7, 12)


FULL = """\
version: 1
name: full.example_1
description: Every field set.
vars:
  plain: 0.10
  flag: yes
  from_env: {env: BATCHFLOW_TEST_FROM_ENV, default: fallback}
storage:
  containers: [input, app, output]
  uploads:
    - source: data
      container: input
      include: "*.txt"
      exclude: ["skip/**", "*.tmp"]
      prefix: in/
  downloads:
    - container: output
      destination: ../results
      prefix: out/
pool:
  id: full-pool
  vm_size: Standard_D2s_v3
  image: {publisher: canonical, offer: ubuntu-24_04-lts, sku: server, version: "1.2.3"}
  node_agent_sku_id: batch.node.ubuntu 24.04
  task_slots_per_node: 4
  autoscale: {formula: "$TargetDedicatedNodes = 2;", evaluation_interval: PT15M}
  start_task:
    command: setup.sh
    elevated: true
    wait_for_success: false
    max_retries: 2
    resource_files: [{container: app, blob: setup.sh}]
    environment: {MODE: batch}
job:
  id: full-job
  max_wall_clock: 2d
  max_task_retries: -1
tasks:
  foreach: {container: input, pattern: "in/**/*.txt"}
  id: "t-{{ input.stem }}"
  command: ./run.sh {{ input.path }}
  environment: {LEVEL: "{{ vars.plain }}"}
  resource_files:
    - {container: app, blob: run.sh, file_path: run.sh}
  outputs:
    - {pattern: "*.log", container: output, destination: "logs/", condition: completion}
    - {pattern: result.json, container: output}
  max_retries: 3
  max_wall_clock: 1h30m
monitor: {timeout: 90, poll_interval: 500ms}
cleanup: {job: keep, pool: delete, input_containers: delete, output_containers: keep}
local:
  concurrency: 2
  workspace: .work
  start_task: {command: "true"}
  requires: [sh, python3]
"""


def test_every_field_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHFLOW_TEST_FROM_ENV", raising=False)
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "data").mkdir()
    (tmp_path / "flow" / "wf.yaml").write_text(FULL, encoding="utf-8")
    wf = load_workflow(tmp_path / "flow" / "wf.yaml")
    base = tmp_path / "flow"
    assert wf.description == "Every field set."
    # vars keep the text as written; a default applies when the variable is unset.
    assert wf.vars == {"plain": "0.10", "flag": "yes", "from_env": "fallback"}
    assert wf.uploads == (UploadSpec(base / "data", "input", ("*.txt",), ("skip/**", "*.tmp"), "in/"),)
    assert wf.downloads == (DownloadSpec("output", tmp_path / "results", "out/"),)
    assert wf.pool == PoolSpec(
        id="full-pool",
        vm_size="Standard_D2s_v3",
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server", "1.2.3"),
        node_agent_sku_id="batch.node.ubuntu 24.04",
        task_slots_per_node=4,
        autoscale=AutoScaleSpec("$TargetDedicatedNodes = 2;", 900.0),
        start_task=StartTaskSpec(
            command="setup.sh",
            elevated=True,
            wait_for_success=False,
            max_retries=2,
            resource_files=(ResourceFileSpec("app", "setup.sh"),),
            environment={"MODE": "batch"},
        ),
    )
    assert wf.job == JobSpec("full-job", 172800.0, -1)
    assert wf.tasks == TaskTemplate(
        foreach=ForeachSpec("input", "in/**/*.txt"),
        command="./run.sh {{ input.path }}",
        id="t-{{ input.stem }}",
        environment={"LEVEL": "{{ vars.plain }}"},
        resource_files=(ResourceFileSpec("app", "run.sh", "run.sh"),),
        outputs=(
            OutputSpec("*.log", "output", "logs/", OutputCondition.COMPLETION),
            OutputSpec("result.json", "output", None, OutputCondition.SUCCESS),
        ),
        max_retries=3,
        max_wall_clock=5400.0,
    )
    assert wf.monitor == MonitorSpec(timeout=90.0, poll_interval=0.5)
    assert wf.cleanup == CleanupSpec(
        CleanupAction.KEEP, CleanupAction.DELETE, CleanupAction.DELETE, CleanupAction.KEEP
    )
    assert local_settings(wf) == LocalSettings(2, base / ".work", StartTaskSpec("true"), ("sh", "python3"))
    assert wf.workspace == base / ".work"


def test_vars_come_from_the_environment_and_set_overrides_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHFLOW_TEST_FROM_ENV", "from the environment")
    (tmp_path / "data").mkdir()
    (tmp_path / "wf.yaml").write_text(FULL, encoding="utf-8")
    assert load_workflow(tmp_path / "wf.yaml").vars["from_env"] == "from the environment"
    wf = load_workflow(tmp_path / "wf.yaml", {"from_env": "from --set", "plain": "7"})
    assert wf.vars == {"plain": "7", "flag": "yes", "from_env": "from --set"}


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    text = edit(
        "tasks:\n",
        "tasks:\n  environment: &env {A: one, B: two}\n  resource_files:\n"
        "    - &rf {container: input, blob: a.txt}\n    - {<<: *rf, blob: b.txt}\n",
    )
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    wf = load_workflow(tmp_path / "wf.yaml")
    assert wf.tasks.environment == {"A": "one", "B": "two"}
    assert wf.tasks.resource_files == (ResourceFileSpec("input", "a.txt"), ResourceFileSpec("input", "b.txt"))


# ---- problems: schema ---------------------------------------------------------------------


def test_minimal_is_valid() -> None:
    assert problems(MINIMAL) == []


def test_type_error() -> None:
    assert problems(edit("vm_size: Standard_D2s_v3", "vm_size: 5")) == [
        "wf.yaml:7:12: pool.vm_size: 5 is not of type 'string'"
    ]


def test_unknown_key_points_at_the_key_and_suggests() -> None:
    assert problems(edit("  vm_size: Standard_D2s_v3\n", "  vm_size: Standard_D2s_v3\n  vm_sise: x\n")) == [
        "wf.yaml:8:3: pool: unknown key 'vm_sise'; did you mean 'vm_size'?"
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_ones() -> None:
    assert problems(MINIMAL + "colour: blue\n") == [
        "wf.yaml:15:1: unknown key 'colour'; expected one of: version, name, description, vars, storage, "
        "pool, job, tasks, monitor, cleanup, local, azure"
    ]


def test_missing_required_points_at_the_parent_mapping() -> None:
    assert problems(edit("  vm_size: Standard_D2s_v3\n", "")) == ["wf.yaml:6:3: pool: 'vm_size' is required"]


def test_bad_container_name() -> None:
    assert problems(edit("[input, output]", "[input, My_Container, ab--cd]")) == [
        "wf.yaml:4:23: storage.containers[1]: 'My_Container' is not a valid container name: 3-63 lowercase "
        "letters, digits and hyphens, starting with a letter or digit, no '--', not ending in '-'",
        "wf.yaml:4:37: storage.containers[2]: 'ab--cd' is not a valid container name: 3-63 lowercase "
        "letters, digits and hyphens, starting with a letter or digit, no '--', not ending in '-'",
    ]


@pytest.mark.parametrize("name", ["abc", "a-b-c", "0day", "x" * 63])
def test_good_container_names(name: str) -> None:
    assert problems(edit("[input, output]", f"[input, output, {name}]")) == []


@pytest.mark.parametrize("name", ["ab", "x" * 64, "-ab", "ab-", "a--b", "Abc", "a_b", "a.b"])
def test_bad_container_names(name: str) -> None:
    (found,) = problems(edit("[input, output]", f"[input, output, '{name}']"))
    assert found.startswith(f"wf.yaml:4:31: storage.containers[2]: '{name}' is not a valid container name")


def test_duplicate_container() -> None:
    assert problems(edit("[input, output]", "[input, output, input]")) == [
        "wf.yaml:4:31: storage.containers[2]: 'input' is listed more than once"
    ]


def test_bad_pool_and_job_ids() -> None:
    text = edit("id: demo-pool", "id: demo pool", edit("id: demo-job", f"id: {'j' * 65}"))
    assert problems(text) == [
        "wf.yaml:6:7: pool.id: 'demo pool' is not a valid Batch id: 1-64 letters, digits, hyphens and "
        "underscores",
        f"wf.yaml:11:7: job.id: '{'j' * 65}' is not a valid Batch id: 1-64 letters, digits, hyphens and "
        "underscores",
    ]


def test_bad_duration() -> None:
    assert problems(edit("  id: demo-job\n", "  id: demo-job\n  max_wall_clock: 30 minutes\n")) == [
        "wf.yaml:12:19: job.max_wall_clock: '30 minutes' is not a valid duration: use seconds (90) or a "
        "string like '90s', '30m', '1h30m', '2d', '500ms' or 'PT30M'"
    ]


def test_negative_duration() -> None:
    assert problems(MINIMAL + "monitor: {timeout: -1}\n") == [
        "wf.yaml:15:20: monitor.timeout: -1 is not a valid duration: use seconds (90) or a string like "
        "'90s', '30m', '1h30m', '2d', '500ms' or 'PT30M'"
    ]


def test_unsupported_version() -> None:
    assert problems(edit("version: 1", "version: 2")) == [
        "wf.yaml:1:10: version: unsupported version 2; this batchflow reads version 1"
    ]


def test_enum_and_range() -> None:
    text = MINIMAL + "cleanup: {pool: sometimes}\nlocal: {concurrency: 0}\n"
    assert problems(text) == [
        "wf.yaml:15:17: cleanup.pool: 'sometimes' is not one of ['delete', 'keep', 'delete-if-created']",
        "wf.yaml:16:22: local.concurrency: 0 is less than the minimum of 1",
    ]


def test_missing_value_says_what_was_expected() -> None:
    assert problems(edit("  id: demo-job\n", "  id:\n")) == [
        "wf.yaml:11:6: job.id: expected a string, found nothing",
    ]


def test_include_takes_a_glob_or_a_list_of_globs(tmp_path: Path) -> None:
    text = edit(
        "pool:\n",
        "  uploads:\n    - {source: ., container: input, include: [5], exclude: {a: 1}}\n"
        "  downloads:\n    - {container: output, destination: o, prefix: 3}\npool:\n",
    )
    assert problems(text) == [
        "wf.yaml:6:47: storage.uploads[0].include[0]: 5 is not of type 'string'",
        "wf.yaml:6:60: storage.uploads[0].exclude: expected a glob pattern or a list of them, "
        "found a mapping",
        "wf.yaml:8:51: storage.downloads[0].prefix: 3 is not of type 'string'",
    ]


def test_variable_and_environment_names() -> None:
    text = edit("tasks:\n", "vars: {bad-name: x}\ntasks:\n  environment: {1ST: x}\n")
    assert problems(text) == [
        "wf.yaml:12:8: vars.bad-name: 'bad-name' is not a valid variable name: letters, digits and "
        "underscores, not starting with a digit",
        "wf.yaml:14:17: tasks.environment.1ST: '1ST' is not a valid environment variable name: letters, "
        "digits and underscores, not starting with a digit",
    ]


def test_autoscale_excludes_fixed_node_counts() -> None:
    text = edit("  node_agent_sku_id", "  dedicated_nodes: 2\n  autoscale: {formula: f}\n  node_agent_sku_id")
    assert problems(text) == [
        "wf.yaml:10:14: pool.autoscale: cannot be combined with dedicated_nodes: the autoscale formula sets "
        "the node counts"
    ]


def test_undeclared_container_with_suggestion() -> None:
    text = edit("  command:", "  outputs: [{pattern: x, container: ouptut}]\n  command:")
    text = edit("{container: input,", "{container: inputs,", text)
    assert problems(text) == [
        "wf.yaml:13:24: tasks.foreach.container: container 'inputs' is not declared in storage.containers; "
        "did you mean 'input'?",
        "wf.yaml:14:37: tasks.outputs[0].container: container 'ouptut' is not declared in "
        "storage.containers; did you mean 'output'?",
    ]


def test_undeclared_container_without_a_close_one() -> None:
    assert problems(edit("{container: input,", "{container: zebra,")) == [
        "wf.yaml:13:24: tasks.foreach.container: container 'zebra' is not declared in storage.containers "
        "(declared: input, output)"
    ]


def test_several_problems_are_reported_together_in_position_order() -> None:
    text = MINIMAL.replace("version: 1", "version: 1\ndescripton: x").replace(
        "vm_size: Standard_D2s_v3", "vm_size: 5"
    )
    text = text.replace("job:\n  id: demo-job\n", "job:\n  id: demo-job\n  max_task_retries: 101\n")
    text = text.replace("[input, output]", "[Input, output]")
    assert problems(text) == [
        "wf.yaml:2:1: unknown key 'descripton'; did you mean 'description'?",
        "wf.yaml:5:16: storage.containers[0]: 'Input' is not a valid container name: 3-63 lowercase letters, "
        "digits and hyphens, starting with a letter or digit, no '--', not ending in '-'",
        "wf.yaml:8:12: pool.vm_size: 5 is not of type 'string'",
        "wf.yaml:13:21: job.max_task_retries: 101 is greater than the maximum of 100",
        "wf.yaml:15:24: tasks.foreach.container: container 'input' is not declared in storage.containers; "
        "did you mean 'Input'?",
    ]


# ---- problems: credentials -----------------------------------------------------------------


def test_credential_like_var_name() -> None:
    text = edit("tasks:\n", "vars:\n  bitrate: 128k\n  ACCOUNT_KEY: abc\ntasks:\n")
    assert problems(text) == [f"wf.yaml:14:3: vars.ACCOUNT_KEY: {ADVICE}"]


def test_credential_like_environment_name() -> None:
    text = edit("  command:", "  environment: {sasToken: x}\n  command:")
    assert problems(text) == [f"wf.yaml:14:17: tasks.environment.sasToken: {ADVICE}"]


@pytest.mark.parametrize(
    "name",
    [
        "ACCOUNT_KEY",
        "key",
        "sas_token",
        "sasToken",
        "apiKey",
        "APIKey",
        "github-token",
        "client_secret",
        "SECRET_NAME",
        "DB_PASSWORD",
        "passwd",
        "SAS_URL",
        "credential",
        "AZURE_STORAGE_CONNECTION_STRING",
        "connectionString",
        "AccountKey",
    ],
)
def test_names_that_look_like_credentials(name: str) -> None:
    assert looks_like_credential_name(name)


@pytest.mark.parametrize(
    "name",
    ["keyframe", "KEYFRAME", "token_name", "key_id", "monkey", "bitrate", "sassy", "passage", "tokenizer"],
)
def test_names_that_do_not(name: str) -> None:
    assert not looks_like_credential_name(name)


def test_sas_like_value() -> None:
    text = edit(
        "  command: wc -l",
        "  command: curl 'https://a.blob.core.windows.net/c/x?sv=2022&sig=abc%3D' && wc -l",
    )
    assert problems(text) == [
        "wf.yaml:14:12: tasks.command: contains 'sig=', which looks like part of a SAS token; " + ADVICE
    ]


def test_connection_string_value() -> None:
    text = edit(
        "tasks:\n", "vars: {conn: 'DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc'}\ntasks:\n"
    )
    assert problems(text) == [
        "wf.yaml:12:14: vars.conn: contains 'AccountKey=', which looks like part of a storage connection "
        "string; " + ADVICE
    ]


# ---- problems: YAML -----------------------------------------------------------------------


def test_yaml_syntax_error() -> None:
    assert problems(edit("[input, output]", "[input, output")) == [
        "wf.yaml:5:5: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at "
        "line 4, column 15)"
    ]


def test_tab_indentation() -> None:
    assert problems(edit("  id: demo-job", "\tid: demo-job")) == [
        "wf.yaml:11:1: invalid YAML: found character '\\t' that cannot start any token"
    ]


def test_unquoted_template_at_the_start_of_a_value() -> None:
    assert problems(edit("command: wc -l {{ input.path }}", "command: {{ input.path }}")) == [
        "wf.yaml:14:12: tasks.command: a value that starts with a template must be quoted, e.g. "
        '"{{ input.stem }}.mp3"'
    ]


def test_unquoted_template_followed_by_text() -> None:
    assert problems(edit("command: wc -l {{ input.path }}", "command: {{ input.stem }}.mp3")) == [
        "wf.yaml:14:28: invalid YAML: expected <block end>, but found '<scalar>' (while parsing a block "
        "mapping at line 13, column 3); a value that starts with a template must be quoted, e.g. "
        '"{{ input.stem }}.mp3"'
    ]


def test_duplicate_key() -> None:
    assert problems(edit("  id: demo-job\n", "  id: demo-job\n  id: other\n")) == [
        "wf.yaml:12:3: job.id: duplicate key 'id' (first set at line 11)"
    ]


def test_python_tag_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = edit("name: demo", f"name: !!python/object/apply:os.system ['touch {marker}']")
    assert problems(text) == [
        "wf.yaml:2:7: name: the tag '!!python/object/apply:os.system' is not allowed: a workflow file holds "
        "only plain strings, numbers, booleans, lists and mappings"
    ]
    assert not marker.exists()


def test_custom_tag() -> None:
    assert problems(edit("vm_size: Standard_D2s_v3", "vm_size: !vault vm-size")) == [
        "wf.yaml:7:12: pool.vm_size: the tag '!vault' is not allowed: a workflow file holds only plain "
        "strings, numbers, booleans, lists and mappings"
    ]


def test_standard_tags_are_fine() -> None:
    assert problems(edit("vm_size: Standard_D2s_v3", "vm_size: !!str Standard_D2s_v3")) == []


def test_billion_laughs() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    assert problems(MINIMAL + "\n".join(lines) + "\n") == [
        "wf.yaml: the document expands to more than 100,000 values through YAML aliases "
        "(a 'billion laughs' document?); refusing to read it"
    ]


def test_recursive_alias() -> None:
    assert problems(MINIMAL + "loop: &loop [*loop]\n") == [
        "wf.yaml:15:7: loop[0]: this alias refers to a value that contains it; a workflow cannot be recursive"
    ]


def test_several_documents() -> None:
    assert problems(MINIMAL + "---\nversion: 1\n") == [
        "wf.yaml:15:1: a workflow file holds one YAML document, but a second one starts here"
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == ["wf.yaml: the file is empty; a workflow starts with 'version: 1'"]


def test_document_that_is_not_a_mapping() -> None:
    assert problems("- version: 1\n") == [
        "wf.yaml:1:1: a workflow file is a mapping of keys to values (such as 'version: 1'), not a list"
    ]


def test_control_character() -> None:
    assert problems(edit("name: demo", "name: de\x07mo")) == [
        "wf.yaml:2:9: invalid YAML: character #x7 is not allowed"
    ]


def test_dates_stay_text() -> None:
    data, _, found = validate_document(
        edit("name: demo", "name: demo\ndescription: 2024-01-31"), Path("wf.yaml")
    )
    assert found == []
    assert data is not None and data["description"] == "2024-01-31"


# ---- problems found by load_workflow -------------------------------------------------------


def test_file_too_big(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(MINIMAL + "#" * (5 * 1024 * 1024), encoding="utf-8")
    assert load_problems(path) == [f"{path}: the file is 5.0 MB; a workflow file may be at most 5 MB"]


def test_missing_file(tmp_path: Path) -> None:
    assert load_problems(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: cannot read the workflow file: No such file or directory"
    ]


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_bytes(b"version: 1\nname: caf\xe9\n")
    assert load_problems(tmp_path / "wf.yaml") == [
        f"{tmp_path / 'wf.yaml'}: the file is not UTF-8 text (byte 20 cannot be decoded)"
    ]


def test_problem_file_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "x.yaml").write_text(
        edit("vm_size: Standard_D2s_v3", "vm_size: 5"), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidWorkflow) as info:
        load_workflow(Path("flows/x.yaml"))
    assert str(info.value) == "flows/x.yaml:7:12: pool.vm_size: 5 is not of type 'string'"
    assert info.value.exit_code == 2


def test_set_of_an_undeclared_variable(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(edit("tasks:\n", "vars: {bitrate: 128k}\ntasks:\n"), encoding="utf-8")
    assert load_problems(tmp_path / "wf.yaml", {"bitrat": "1", "colour": "red"}) == [
        f"{tmp_path / 'wf.yaml'}: --set: 'bitrat' is not declared in vars; did you mean 'bitrate'?",
        f"{tmp_path / 'wf.yaml'}: --set: 'colour' is not declared in vars; declare it in vars first",
    ]


def test_environment_variable_not_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHFLOW_TEST_UNSET", raising=False)
    text = edit("tasks:\n", "vars:\n  token_name: {env: BATCHFLOW_TEST_UNSET}\ntasks:\n")
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    assert load_problems(tmp_path / "wf.yaml") == [
        f"{tmp_path / 'wf.yaml'}:13:15: vars.token_name: environment variable BATCHFLOW_TEST_UNSET is not set"
    ]
    # --set supplies it instead.
    assert load_workflow(tmp_path / "wf.yaml", {"token_name": "x"}).vars == {"token_name": "x"}


def test_upload_source_must_be_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    text = edit(
        "pool:\n",
        "  uploads:\n    - {source: missing, container: input}\n"
        "    - {source: a-file, container: input}\npool:\n",
    )
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    assert load_problems(tmp_path / "wf.yaml") == [
        f"{tmp_path / 'wf.yaml'}:6:16: storage.uploads[0].source: folder 'missing' does not exist "
        f"(looked for {tmp_path / 'missing'})",
        f"{tmp_path / 'wf.yaml'}:7:16: storage.uploads[1].source: 'a-file' is not a folder "
        f"({tmp_path / 'a-file'})",
    ]


def test_load_reports_schema_and_environment_problems_together(tmp_path: Path) -> None:
    text = edit("tasks:\n", "vars: {a: 1}\ntasks:\n", edit("vm_size: Standard_D2s_v3", "vm_size: 5"))
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    assert load_problems(tmp_path / "wf.yaml", {"b": "2"}) == [
        f"{tmp_path / 'wf.yaml'}: --set: 'b' is not declared in vars; declare it in vars first",
        f"{tmp_path / 'wf.yaml'}:7:12: pool.vm_size: 5 is not of type 'string'",
    ]


# ---- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("PT30M", 1800.0),
        ("PT1H30M", 5400.0),
        ("P1D", 86400.0),
        ("P1DT2H", 93600.0),
        ("PT0.5S", 0.5),
    ],
)
def test_parse_duration(value: float | str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "30", "30 m", "m", "1m1h", "1x", "PT", "P", "P1Y", "pt30m", "-5s", -1, float("inf"), True]
)
def test_parse_duration_rejects(value: float | str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == (
        f"{value!r} is not a valid duration: use seconds (90) or a string like '90s', '30m', '1h30m', "
        "'2d', '500ms' or 'PT30M'"
    )


@pytest.mark.parametrize(
    "value", ["90s", "1h30m", "500ms", "1.5h", "PT30M", "P1DT2H", "30", "1m1h", "PT", "P", "1x", "30m\n"]
)
def test_schema_and_parse_duration_agree(value: str) -> None:
    validator = Draft202012Validator(schema()["$defs"]["duration"])
    try:
        parse_duration(value)
        parsed = True
    except ValueError:
        parsed = False
    if value.endswith("\n"):  # JSON Schema's '$' allows a final newline; the builder reports it instead
        assert validator.is_valid(value) and not parsed
    else:
        assert validator.is_valid(value) == parsed


def test_schema_file_is_json() -> None:
    assert json.loads(schema_text()) == schema()


def test_reference_workflow_copy_is_independent_of_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "workflows" / "mp4_to_mp3.yaml", tmp_path / "wf.yaml")
    (tmp_path / "samples" / "mp4").mkdir(parents=True)
    monkeypatch.chdir(ROOT)
    wf = load_workflow(tmp_path / "wf.yaml")
    assert wf.uploads[0].source == tmp_path / "samples" / "mp4"
