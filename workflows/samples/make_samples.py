"""Make the tutorial's sample MP4s: short synthetic clips with awkward, real-world file names.

Each clip is a lavfi test pattern (testsrc2 or smptebars) with a sine tone at its own
frequency, encoded small (160x120, MPEG-4 part 2 + AAC) and as reproducibly as ffmpeg
allows: the same ffmpeg binary gives the same bytes.

The first names exercise quoting in task commands: a space, a single quote with a
command substitution, a non-ASCII letter, shell operators. The substitution is harmless
on purpose (`touch INJECTED`): if a command ever runs it unquoted, the stray file
shows it, and nothing is lost. Past the first five, names are `clip NNN.mp4`.

    python workflows/samples/make_samples.py                     # -> workflows/samples/mp4/
    python workflows/samples/make_samples.py --out /tmp/in --count 40 --seconds 2

Also importable: `make_samples(out, count, seconds) -> list[Path]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "mp4"
DEFAULT_SECONDS = 3.0

NAMES = (
    "sample 1.mp4",
    "it's $(touch INJECTED).mp4",
    "café.mp4",
    "semi;colon & amp.mp4",
    "plain.mp4",
)
PATTERNS = ("testsrc2", "smptebars")
SIZE = "160x120"
FRAME_RATE = 10
SAMPLE_RATE = 22050


class FFmpegNotFound(Exception):
    """Neither ffmpeg on PATH nor the imageio-ffmpeg package is available."""


def ffmpeg_exe() -> str:
    """ffmpeg from PATH, else the static binary of imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg  # optional: only needed without a system ffmpeg
    except ImportError:
        raise FFmpegNotFound(
            "ffmpeg is not on PATH and imageio-ffmpeg is not installed: "
            "install ffmpeg (apt-get install ffmpeg) or `pip install imageio-ffmpeg`"
        ) from None
    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def sample_names(count: int) -> list[str]:
    """The file names `make_samples` writes for `count` clips."""
    return [NAMES[i] if i < len(NAMES) else f"clip {i + 1:03d}.mp4" for i in range(count)]


def tone_hz(index: int) -> int:
    """Each clip's sine frequency, so their audio differs: 220, 330, 440, ... Hz."""
    return 220 + 110 * (index % 16)


def ffmpeg_args(ffmpeg: str, target: Path, index: int, seconds: float) -> list[str]:
    """The ffmpeg command line for clip number `index` (0-based)."""
    pattern = PATTERNS[index % len(PATTERNS)]
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"{pattern}=size={SIZE}:rate={FRAME_RATE}:duration={seconds}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={tone_hz(index)}:sample_rate={SAMPLE_RATE}:duration={seconds}",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "mpeg4",
        "-q:v",
        "12",
        "-g",
        "300",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-c:a",
        "aac",
        "-b:a",
        "24k",
        "-ac",
        "1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-map_metadata",
        "-1",
        # "file:" so a name that starts with "-" could never be read as an option.
        f"file:{target}",
    ]


def make_samples(out: Path, count: int = len(NAMES), seconds: float = DEFAULT_SECONDS) -> list[Path]:
    """Write `count` clips of `seconds` each into `out` (created if missing); return their paths.

    Existing files with the same names are overwritten. Raises FFmpegNotFound, or
    subprocess.CalledProcessError (with ffmpeg's stderr) if an encode fails.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    ffmpeg = ffmpeg_exe()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(sample_names(count)):
        target = out / name
        subprocess.run(ffmpeg_args(ffmpeg, target, index, seconds), check=True, capture_output=True)
        paths.append(target)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make the sample MP4s for workflows/mp4_to_mp3.yaml.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--count", type=int, default=len(NAMES), help="number of clips (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="length of each clip (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        paths = make_samples(args.out, args.count, args.seconds)
    except (ValueError, FFmpegNotFound) as e:
        print(f"make_samples: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(
            f"make_samples: ffmpeg failed ({e.returncode}):\n{e.stderr.decode(errors='replace')}",
            file=sys.stderr,
        )
        return 1
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p.stat().st_size:>8}  {p}")
    print(f"{total:>8}  total ({len(paths)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
