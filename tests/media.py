"""Helpers for tests that check media files: which ffmpeg/ffprobe to use, and what a file holds.

`probe(path)` asks ffprobe when it is on PATH. Without ffprobe it decodes the whole file
with ffmpeg (`-f null -`) and reads the stream list and the last `time=` from its log,
which is slower and coarser (10 ms). On CI (env CI=true) a missing ffprobe is an error,
so CI never silently tests the fallback instead of the real thing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType


class MissingTool(Exception):
    """A program the media helpers need is not installed."""


@dataclass(frozen=True)
class Stream:
    codec_type: str  # "video", "audio", ...
    codec_name: str  # "mpeg4", "aac", "mp3", ...


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # seconds
    streams: tuple[Stream, ...]

    def has(self, codec_type: str, codec_name: str | None = None) -> bool:
        return any(
            s.codec_type == codec_type and (codec_name is None or s.codec_name == codec_name)
            for s in self.streams
        )


def ffmpeg_exe() -> str:
    """ffmpeg from PATH, else the static binary of imageio-ffmpeg (a test dependency)."""
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    import imageio_ffmpeg  # only needed when there is no system ffmpeg

    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def ffprobe_exe() -> str | None:
    """ffprobe from PATH, or None (imageio-ffmpeg ships no ffprobe)."""
    return shutil.which("ffprobe")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def probe(path: Path) -> MediaInfo:
    """Duration and streams of a media file, by ffprobe or (not on CI) by decoding it."""
    ffprobe = ffprobe_exe()
    if ffprobe is not None:
        return probe_with_ffprobe(path, ffprobe)
    if running_in_ci():
        raise MissingTool(
            "ffprobe is not on PATH and CI=true: install it on the CI runner (apt-get install ffmpeg); "
            "the decode fallback is only for developer machines"
        )
    return probe_by_decoding(path, ffmpeg_exe())


def audio_duration(path: Path) -> float:
    """Duration in seconds of an MP3 file; fails the test if it has no mp3 audio stream."""
    info = probe(path)
    if not info.has("audio", "mp3"):
        raise AssertionError(f"{path}: no mp3 audio stream; streams: {list(info.streams)}")
    return info.duration


def probe_with_ffprobe(path: Path, ffprobe: str) -> MediaInfo:
    proc = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,codec_type",
            "-of",
            "json",
            # "file:" so names with ':' or a leading '-' stay file names.
            f"file:{path}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{path}: ffprobe failed ({proc.returncode}): {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    streams = tuple(Stream(s.get("codec_type", ""), s.get("codec_name", "")) for s in data.get("streams", []))
    duration = data.get("format", {}).get("duration")
    if duration is None:
        raise AssertionError(f"{path}: ffprobe reported no duration: {proc.stdout.strip()}")
    return MediaInfo(float(duration), streams)


def probe_by_decoding(path: Path, ffmpeg: str) -> MediaInfo:
    proc = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-i", f"file:{path}", "-f", "null", "-"],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{path}: ffmpeg could not decode it ({proc.returncode}):\n{proc.stderr}")
    return parse_decode_log(proc.stderr, path)


_INPUT_STREAM = re.compile(r"^\s*Stream #\d+:\d+[^:]*: (\w+): (\w+)", re.MULTILINE)
_TIME = re.compile(r"\btime=(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def parse_decode_log(log: str, path: Path) -> MediaInfo:
    """Streams of input #0 and the last `time=` from the log of `ffmpeg -i FILE -f null -`."""
    inputs = log.split("\nOutput #", 1)[0].split("\nStream mapping:", 1)[0]
    streams = tuple(Stream(kind.lower(), codec) for kind, codec in _INPUT_STREAM.findall(inputs))
    times = _TIME.findall(log)
    if not times:
        raise AssertionError(f"{path}: no time= in ffmpeg's decode log:\n{log}")
    hours, minutes, seconds = times[-1]
    return MediaInfo(int(hours) * 3600 + int(minutes) * 60 + float(seconds), streams)


REPO = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO / "workflows" / "samples" / "mp4"
MAKE_SAMPLES = REPO / "workflows" / "samples" / "make_samples.py"


def sample_maker() -> ModuleType:
    """workflows/samples/make_samples.py as a module (it is a script, not part of the package).

    Use: `sample_maker().make_samples(tmp_path, count=40, seconds=2)`.
    """
    spec = importlib.util.spec_from_file_location("make_samples", MAKE_SAMPLES)
    if spec is None or spec.loader is None:
        raise MissingTool(f"cannot load {MAKE_SAMPLES}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_samples"] = module
    spec.loader.exec_module(module)
    return module
