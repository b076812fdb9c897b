"""The example inputs: committed sample MP4s, the script that makes them, the word-count task script.

Real ffmpeg, real subprocesses. Running the workflows themselves is tested elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from media import (
    MAKE_SAMPLES,
    REPO,
    SAMPLES_DIR,
    MediaInfo,
    MissingTool,
    Stream,
    audio_duration,
    ffmpeg_exe,
    ffprobe_exe,
    parse_decode_log,
    probe,
    probe_by_decoding,
    sample_maker,
)

WORDCOUNT = REPO / "workflows" / "wordcount" / "app" / "wordcount.py"
TEXTS = REPO / "workflows" / "wordcount" / "texts"
# Container timestamps and AAC priming round durations a little; a wrong clip is off by seconds.
TOLERANCE = 0.06


@pytest.fixture(scope="module")
def maker() -> ModuleType:
    return sample_maker()


def committed_samples() -> list[Path]:
    return sorted(SAMPLES_DIR.glob("*.mp4"))


# ---- committed samples ---------------------------------------------------------------------


def test_committed_samples_are_the_five_named_ones(maker: ModuleType) -> None:
    assert sorted(p.name for p in committed_samples()) == sorted(maker.NAMES)
    assert sorted(maker.NAMES) == sorted(
        ["sample 1.mp4", "it's $(touch INJECTED).mp4", "café.mp4", "semi;colon & amp.mp4", "plain.mp4"]
    )


def test_committed_samples_are_small() -> None:
    assert sum(p.stat().st_size for p in committed_samples()) < 300_000


@pytest.mark.parametrize("sample", committed_samples(), ids=lambda p: p.name)
def test_committed_sample_has_video_and_audio_of_three_seconds(sample: Path) -> None:
    info = probe(sample)
    assert info.streams == (Stream("video", "mpeg4"), Stream("audio", "aac"))
    assert info.duration == pytest.approx(3.0, abs=TOLERANCE)


@pytest.mark.parametrize("sample", committed_samples(), ids=lambda p: p.name)
def test_decoding_fallback_agrees_with_probe(sample: Path) -> None:
    decoded = probe_by_decoding(sample, ffmpeg_exe())
    assert decoded.streams == (Stream("video", "mpeg4"), Stream("audio", "aac"))
    assert decoded.duration == pytest.approx(probe(sample).duration, abs=TOLERANCE)


# ---- make_samples ----------------------------------------------------------------------------


def test_make_samples_writes_the_requested_count(maker: ModuleType, tmp_path: Path) -> None:
    paths = maker.make_samples(tmp_path / "in", count=7, seconds=1)
    assert [p.name for p in paths] == [*maker.NAMES, "clip 006.mp4", "clip 007.mp4"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(p.name for p in paths)
    info = probe(paths[-1])
    assert info.has("video") and info.has("audio")
    assert info.duration == pytest.approx(1.0, abs=TOLERANCE)


def test_make_samples_is_reproducible(maker: ModuleType, tmp_path: Path) -> None:
    first = maker.make_samples(tmp_path / "a", count=2, seconds=1)
    second = maker.make_samples(tmp_path / "b", count=2, seconds=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_make_samples_rejects_zero_count(maker: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^count must be at least 1, got 0$"):
        maker.make_samples(tmp_path, count=0)


def test_make_samples_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli out"
    proc = subprocess.run(
        [sys.executable, str(MAKE_SAMPLES), "--out", str(out), "--count", "2", "--seconds", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["it's $(touch INJECTED).mp4", "sample 1.mp4"]
    assert proc.stdout.splitlines()[-1].endswith("total (2 files)")
    assert probe(out / "sample 1.mp4").duration == pytest.approx(2.0, abs=TOLERANCE)


def test_make_samples_cli_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(MAKE_SAMPLES), "--out", str(tmp_path), "--seconds", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1,
        "",
        "make_samples: seconds must be positive, got 0.0\n",
    )
    assert list(tmp_path.iterdir()) == []


# ---- media helpers ---------------------------------------------------------------------------


def test_audio_duration_of_an_mp3(tmp_path: Path) -> None:
    mp3 = tmp_path / "it's.mp3"
    source = SAMPLES_DIR / "plain.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(source), "-vn", "-b:a", "64k", str(mp3)],
        check=True,
    )
    # MP3 frames pad the end: a little longer than the 3 s source, never shorter.
    assert 3.0 - TOLERANCE <= audio_duration(mp3) <= 3.0 + 0.1


def test_audio_duration_requires_an_mp3_stream() -> None:
    sample = SAMPLES_DIR / "plain.mp4"
    with pytest.raises(AssertionError) as info:
        audio_duration(sample)
    assert str(info.value) == (
        f"{sample}: no mp3 audio stream; streams: "
        "[Stream(codec_type='video', codec_name='mpeg4'), Stream(codec_type='audio', codec_name='aac')]"
    )


def test_probe_without_ffprobe_on_ci_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    assert ffprobe_exe() is None
    with pytest.raises(MissingTool) as info:
        probe(SAMPLES_DIR / "plain.mp4")
    assert str(info.value) == (
        "ffprobe is not on PATH and CI=true: install it on the CI runner (apt-get install ffmpeg); "
        "the decode fallback is only for developer machines"
    )


def test_probe_without_ffprobe_off_ci_decodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No ffmpeg on PATH either: the imageio-ffmpeg binary decodes.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    info = probe(SAMPLES_DIR / "café.mp4")
    assert info.streams == (Stream("video", "mpeg4"), Stream("audio", "aac"))
    assert info.duration == pytest.approx(3.0, abs=TOLERANCE)


DECODE_LOG = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:x.mp4':
  Duration: 00:00:03.00, start: 0.000000, bitrate: 104 kb/s
  Stream #0:0[0x1](und): Video: mpeg4 (Simple Profile) (mp4v / 0x7634706D), yuv420p, 160x120
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 22050 Hz, mono, fltp, 24 kb/s (default)
Stream mapping:
  Stream #0:0 -> #0:0 (mpeg4 (native) -> wrapped_avframe (native))
  Stream #0:1 -> #0:1 (aac (native) -> pcm_s16le (native))
Output #0, null, to 'pipe:':
  Stream #0:0(und): Video: wrapped_avframe, yuv420p(progressive), 160x120
  Stream #0:1(und): Audio: pcm_s16le, 22050 Hz, mono, s16, 352 kb/s (default)
frame=    1 fps=0.0 q=-0.0 size=N/A time=00:00:00.23 bitrate=N/A speed= 400x    \r\
frame=   30 fps=0.0 q=-0.0 Lsize=N/A time=01:02:03.01 bitrate=N/A speed= 390x
video:14kB audio:130kB subtitle:0kB other streams:0kB global headers:0kB muxing overhead: unknown
"""


def test_parse_decode_log_reads_input_streams_and_last_time() -> None:
    assert parse_decode_log(DECODE_LOG, Path("x.mp4")) == MediaInfo(
        3723.01, (Stream("video", "mpeg4"), Stream("audio", "aac"))
    )


def test_parse_decode_log_without_time() -> None:
    with pytest.raises(AssertionError, match=r"^x.mp4: no time= in ffmpeg's decode log:\nnothing$"):
        parse_decode_log("nothing", Path("x.mp4"))


# ---- word count task script ------------------------------------------------------------------


def run_wordcount(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORDCOUNT), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_wordcount_writes_top_words(tmp_path: Path) -> None:
    text = tmp_path / "it's a test.txt"
    text.write_text(
        "The sea, the sea! Don't fear the sea.\n"
        "Storm and storm; the gull\u2019s cry. Über über ÜBER 42 sea_salt\n",
        encoding="utf-8",
    )
    proc = run_wordcount(text.name, "--top", "3", "--out", "result.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "it's a test.txt: 19 words, 10 distinct -> result.json\n"
    assert json.loads((tmp_path / "result.json").read_text(encoding="utf-8")) == {
        "file": "it's a test.txt",
        "words": 19,
        "distinct": 10,
        "top": [
            {"word": "sea", "count": 4},
            {"word": "über", "count": 3},
            {"word": "storm", "count": 2},
        ],
    }


def test_wordcount_default_output_name_and_ties(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("beta alpha gamma alpha beta the the the\n", encoding="utf-8")
    proc = run_wordcount("short.txt", "--top", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "short.counts.json").read_text(encoding="utf-8"))
    assert result["top"] == [
        {"word": "alpha", "count": 2},
        {"word": "beta", "count": 2},
        {"word": "gamma", "count": 1},
    ]


def test_wordcount_keep_stopwords(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("beta alpha the the the\n", encoding="utf-8")
    proc = run_wordcount("short.txt", "--top", "1", "--keep-stopwords", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "short.counts.json").read_text(encoding="utf-8"))
    assert result["top"] == [{"word": "the", "count": 3}]


@pytest.mark.parametrize("text", sorted(TEXTS.glob("*.txt")), ids=lambda p: p.name)
def test_wordcount_on_each_example_text(text: Path, tmp_path: Path) -> None:
    proc = run_wordcount(str(text), "--top", "10", "--out", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert result["file"] == text.name
    counts = [entry["count"] for entry in result["top"]]
    assert len(counts) == 10
    assert counts == sorted(counts, reverse=True)
    assert counts[0] >= 3


def test_wordcount_missing_input(tmp_path: Path) -> None:
    proc = run_wordcount("absent.txt", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert (
        proc.stderr
        == "wordcount: cannot read absent.txt: [Errno 2] No such file or directory: 'absent.txt'\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_example_texts_are_small() -> None:
    texts = sorted(TEXTS.glob("*.txt"))
    assert 3 <= len(texts) <= 4
    assert sum(p.stat().st_size for p in texts) < 8_000
