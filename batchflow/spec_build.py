"""Validated workflow data -> the frozen `Workflow`: defaults filled, durations in seconds,
paths absolute (relative ones are taken from the workflow file's folder).

Only called on data the schema accepted, so the shapes here are known.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchflow.backends import registry
from batchflow.durations import parse_duration
from batchflow.errors import InvalidWorkflow, Problem
from batchflow.model import (
    AutoScaleSpec,
    CleanupAction,
    CleanupSpec,
    DocPath,
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
    SourceMap,
    StartTaskSpec,
    TaskTemplate,
    UploadSpec,
    Workflow,
)
from batchflow.yamlsrc import dotted

Data = dict[str, Any]


def build_workflow(data: Data, variables: Mapping[str, str], path: Path, source: SourceMap) -> Workflow:
    """`path` is the workflow file, absolute; `variables` are the resolved vars."""
    b = _Builder(data, path.parent, source)
    storage: Data = data.get("storage", {})
    tasks: Data = data["tasks"]
    return Workflow(
        version=data["version"],
        name=data["name"],
        path=path,
        base_dir=path.parent,
        pool=b.pool(data["pool"]),
        job=b.job(data["job"]),
        tasks=b.tasks(tasks),
        containers=tuple(storage.get("containers", ())),
        uploads=tuple(b.upload(u) for u in storage.get("uploads", ())),
        downloads=tuple(
            DownloadSpec(d["container"], b.path(d["destination"]), d.get("prefix", ""))
            for d in storage.get("downloads", ())
        ),
        outputs_per_run=bool(storage.get("outputs_per_run", True)),
        logs=_logs(storage.get("logs", {}), tasks),
        description=data.get("description", ""),
        vars=dict(variables),
        monitor=MonitorSpec(
            timeout=b.seconds(("monitor", "timeout"), 1800.0),
            poll_interval=b.seconds(("monitor", "poll_interval"), 5.0),
        ),
        cleanup=CleanupSpec(
            **{k: CleanupAction(v) for k, v in data.get("cleanup", {}).items()},
        ),
        workspace=b.path(data["local"]["workspace"]) if "workspace" in data.get("local", {}) else None,
        settings={
            backend.name: backend.read_settings(_Block(b, backend.name, data.get(backend.name, {})))
            for backend in registry.all_backends()
        },
        source=source,
    )


def _logs(logs: Data, tasks: Data) -> LogSpec:
    """The log container: as given, else the first output's, else the foreach container."""
    outputs = tasks.get("outputs", ())
    default = outputs[0]["container"] if outputs else tasks["foreach"]["container"]
    return LogSpec(container=logs.get("container", default), prefix=logs.get("prefix", "batchflow-logs/"))


def _globs(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _resource_file(d: Data) -> ResourceFileSpec:
    return ResourceFileSpec(d["container"], d["blob"], d.get("file_path"))


def _start_task(d: Data) -> StartTaskSpec:
    return StartTaskSpec(
        command=d["command"],
        elevated=d.get("elevated", False),
        wait_for_success=d.get("wait_for_success", True),
        max_retries=int(d.get("max_retries", 0)),
        resource_files=tuple(_resource_file(r) for r in d.get("resource_files", ())),
        environment=dict(d.get("environment", {})),
    )


class _Block:
    """A backend's block of the workflow (backends/base.py SettingsBlock)."""

    def __init__(self, builder: _Builder, key: str, data: Data) -> None:
        self._builder = builder
        self._key = key
        self._data = data

    @property
    def data(self) -> Data:
        return self._data

    def path(self, key: str) -> Path | None:
        return self._builder.path(self._data[key]) if key in self._data else None

    def seconds(self, key: str, default: float) -> float:
        value: float = self._builder.seconds((self._key, key), default)
        return value

    def start_task(self, key: str) -> StartTaskSpec | None:
        return _start_task(self._data[key]) if key in self._data else None


class _Builder:
    def __init__(self, data: Data, base_dir: Path, source: SourceMap) -> None:
        self.data = data
        self.base_dir = base_dir
        self.source = source

    def path(self, value: str) -> Path:
        return (self.base_dir / Path(value).expanduser()).resolve()

    def seconds(self, path: DocPath, default: float | None) -> Any:
        value: Any = self.data
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        try:
            return parse_duration(value)
        except ValueError as e:  # the schema's pattern and parse_duration agree; this is a safety net
            line, column = self.source.where(path)
            raise InvalidWorkflow([Problem(self.source.file, line, column, dotted(path), str(e))]) from None

    def upload(self, u: Data) -> UploadSpec:
        return UploadSpec(
            source=self.path(u["source"]),
            container=u["container"],
            include=_globs(u.get("include", "**")),
            exclude=_globs(u.get("exclude", [])),
            prefix=u.get("prefix", ""),
        )

    def pool(self, p: Data) -> PoolSpec:
        autoscale = p.get("autoscale")
        return PoolSpec(
            id=p["id"],
            vm_size=p["vm_size"],
            image=ImageReference(**p["image"]),
            node_agent_sku_id=p["node_agent_sku_id"],
            dedicated_nodes=int(p.get("dedicated_nodes", 0)),
            spot_nodes=int(p.get("spot_nodes", 0)),
            task_slots_per_node=int(p.get("task_slots_per_node", 1)),
            autoscale=None
            if autoscale is None
            else AutoScaleSpec(
                formula=autoscale["formula"],
                evaluation_interval=self.seconds(("pool", "autoscale", "evaluation_interval"), 300.0),
            ),
            start_task=_start_task(p["start_task"]) if "start_task" in p else None,
        )

    def job(self, j: Data) -> JobSpec:
        return JobSpec(
            id=j["id"],
            max_wall_clock=self.seconds(("job", "max_wall_clock"), None),
            max_task_retries=int(j.get("max_task_retries", 0)),
        )

    def tasks(self, t: Data) -> TaskTemplate:
        return TaskTemplate(
            foreach=ForeachSpec(t["foreach"]["container"], t["foreach"]["pattern"]),
            command=t["command"],
            id=t.get("id"),
            environment=dict(t.get("environment", {})),
            resource_files=tuple(_resource_file(r) for r in t.get("resource_files", ())),
            outputs=tuple(
                OutputSpec(
                    pattern=o["pattern"],
                    container=o["container"],
                    destination=o.get("destination"),
                    condition=OutputCondition(o.get("condition", "success")),
                )
                for o in t.get("outputs", ())
            ),
            max_retries=int(t["max_retries"]) if "max_retries" in t else None,
            max_wall_clock=self.seconds(("tasks", "max_wall_clock"), None),
        )
