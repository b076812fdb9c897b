"""Test helpers shared by the request-builder tests and the REST spec suite: a rendered task to
build requests from, and the JSON the SDK puts on the wire for a model."""

from __future__ import annotations

import json
from typing import Any

from azure.batch._model_base import SdkJSONEncoder

from batchflow.model import RenderedTask, TaskInput


def sent_body(model: Any) -> Any:
    """What the SDK's operations put on the wire (they json.dumps the model with its own encoder)."""
    return json.loads(json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True))


def rendered_task(**overrides: Any) -> RenderedTask:
    """A task as the mp4_to_mp3 example renders it for `sample 1.mp4`, with `overrides`."""
    fields: dict[str, Any] = {
        "id": "task-sample_1",
        "index": 0,
        "command": "ffmpeg -i 'sample 1.mp4' ./'sample 1.mp3'",
        "inputs": (TaskInput("input", "sample 1.mp4", "sample 1.mp4"),),
        "outputs": (),
        "environment": {},
        "max_retries": 0,
        "max_wall_clock": None,
    }
    fields.update(overrides)
    return RenderedTask(**fields)
