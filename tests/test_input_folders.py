"""Input folders under real use: what input discovery takes, what it refuses and says, and how an
input reaches a local task. Real folders, links, runs and programs (gzip, ffmpeg); nothing mocked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import WriteWorkflow
from media import audio_duration, ffmpeg_exe, probe, sample_maker

from batchflow.backends.blob_urls import fetch_url
from batchflow.cli import main
from batchflow.globs import glob_match, iter_files
from batchflow.inputs import discover
from batchflow.render import build_plan
from batchflow.spec import load_workflow

POOL = {
    "id": "TestPool",
    "vm_size": "Standard_A1_v2",
    "image": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
    "node_agent_sku_id": "batch.node.ubuntu 24.04",
    "dedicated_nodes": 2,
}


def workflow(folder: Path, storage: dict[str, Any], tasks: dict[str, Any], **more: Any) -> Path:
    """A workflow file in `folder` with these storage and tasks sections."""
    doc = {
        "version": 1,
        "name": "inputs-test",
        "storage": storage,
        "pool": POOL,
        "job": {"id": "TestJob"},
        "tasks": tasks,
        "monitor": {"poll_interval": "100ms"},
        **more,
    }
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def plan_json(wf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["plan", str(wf), "--all", "--output", "json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def at(wf: Path, key: str) -> str:
    """`file:line:col` of the value of the first `key:` in the workflow file, as problems give it."""
    for number, line in enumerate(wf.read_text(encoding="utf-8").splitlines(), 1):
        column = line.find(f"{key}: ")
        if column != -1:
            return f"{wf}:{number}:{column + len(key) + 3}"
    raise AssertionError(f"{key!r} is not in {wf}")


def blobs(wf: Path) -> list[str]:
    return [u.blob_name for u in build_plan(load_workflow(wf)).uploads]


# ---- the workspace and the downloads are never inputs --------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("workspace", [None, "ws"], ids=["default-workspace", "local.workspace"])
def test_source_dot_never_uploads_the_workspace_or_the_downloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workspace: str | None
) -> None:
    """`source: .` once uploaded the run's own state and downloaded outputs back as inputs: the task
    count grew 2 -> 18 -> 142 -> 1102 over four runs. It stays 2."""
    write(tmp_path / "a.txt", "alpha\n")
    write(tmp_path / "sub" / "b.txt", "beta\n")
    wf = workflow(
        tmp_path,
        {
            "containers": ["inputs", "outputs"],
            "uploads": [{"source": ".", "container": "inputs", "include": ["**/*.txt"]}],
            "downloads": [{"container": "outputs", "destination": "results"}],
        },
        {
            "foreach": {"container": "inputs", "pattern": "**/*.txt"},
            "command": "cat {{ input.path }} > {{ input.stem }}.out.txt",
            "outputs": [{"pattern": "{{ input.stem }}.out.txt", "container": "outputs"}],
        },
        **({"local": {"workspace": workspace}} if workspace else {}),
    )
    for run in range(3):
        assert main(["run", str(wf), "--quiet", "--output", "json"]) == 0, run
        summary = json.loads(capsys.readouterr().out)
        assert summary["counts"]["succeeded"] == 2, run
        assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a.out.txt", "b.out.txt"]
    assert sorted(t["inputs"][0]["blob"] for t in plan_json(wf, capsys)["tasks"]) == ["a.txt", "sub/b.txt"]


def test_a_workspace_given_on_the_command_line_is_excluded_through_build_plan(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.txt", "a")
    write(tmp_path / "in" / "elsewhere" / "runs" / "state.txt", "a previous run's state")
    wf = workflow(
        tmp_path,
        {"containers": ["inputs"], "uploads": [{"source": "in", "container": "inputs"}]},
        {"foreach": {"container": "inputs", "pattern": "**"}, "command": "true"},
    )
    loaded = load_workflow(wf)
    assert [u.blob_name for u in build_plan(loaded).uploads] == ["a.txt", "elsewhere/runs/state.txt"]
    plan = build_plan(loaded, exclude=[tmp_path / "in" / "elsewhere"])
    assert [u.blob_name for u in plan.uploads] == ["a.txt"]
    assert plan.warnings == ()


def test_a_workspace_that_is_a_link_is_skipped_without_a_warning(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "elsewhere" / "storage" / "inputs" / "a.txt", "a stored blob")
    (tmp_path / "ws").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    wf = workflow(
        tmp_path,
        {
            "containers": ["inputs"],
            "uploads": [{"source": ".", "container": "inputs", "exclude": ["elsewhere/**"]}],
        },
        {"foreach": {"container": "inputs", "pattern": "*.txt"}, "command": "true"},
        local={"workspace": "ws"},
    )
    plan = build_plan(load_workflow(wf))
    assert [u.blob_name for u in plan.uploads] == ["a.txt", "workflow.yaml"]
    assert plan.warnings == ()


def test_a_source_inside_a_download_destination_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "results" / "a.txt", "a downloaded output")
    wf = workflow(
        tmp_path,
        {
            "containers": ["inputs", "outputs"],
            "uploads": [{"source": "results", "container": "inputs"}],
            "downloads": [{"container": "outputs", "destination": "results"}],
        },
        {"foreach": {"container": "inputs", "pattern": "*"}, "command": "true"},
    )
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{at(wf, 'source')}: storage.uploads[0].source: {tmp_path / 'results'} is inside the destination of"
        f" storage.downloads[0] ({tmp_path / 'results'}), whose files are never inputs: upload from a"
        " folder of its own"
    ) in err


# ---- links, broken links and folders --------------------------------------------------------------


def test_links_leaving_the_source_folder_are_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = write(tmp_path / "private" / "secret.txt", "outside content")
    src = tmp_path / "in"
    write(src / "a.txt", "a")
    (src / "inner.txt").symlink_to("a.txt")  # inside, pointing inside: fine
    (src / "secret.txt").symlink_to(outside)
    (src / "sneaky.txt").symlink_to(Path("..") / "private" / "secret.txt")
    (src / "broken.txt").symlink_to(src / "missing.txt")
    (src / "folder.txt").mkdir()
    (src / "linked").symlink_to(tmp_path / "private", target_is_directory=True)
    wf = workflow(
        tmp_path,
        {
            "containers": ["inputs"],
            "uploads": [{"source": "in", "container": "inputs", "include": ["*.txt"]}],
        },
        {"foreach": {"container": "inputs", "pattern": "*.txt"}, "command": "cat {{ input.path }}"},
    )

    plan = build_plan(load_workflow(wf))

    assert [u.blob_name for u in plan.uploads] == ["a.txt", "inner.txt"]
    where = f"{at(wf, 'source')}: storage.uploads[0].source:"
    assert plan.warnings == (
        f"{where} skipped 'folder.txt': a folder (include patterns select files; 'folder.txt/**' selects"
        " the files in it)",
        f"{where} skipped 'broken.txt': a broken link (to {src / 'missing.txt'})",
        f"{where} skipped 'secret.txt': a link to {outside}, outside the source folder",
        f"{where} skipped 'sneaky.txt': a link to {outside}, outside the source folder",
    )
    # The CLI still plans (warnings are not problems), and the outside content is in no upload.
    data = plan_json(wf, capsys)
    assert sorted(t["inputs"][0]["blob"] for t in data["tasks"]) == ["a.txt", "inner.txt"]


def test_a_link_to_a_folder_is_reported_and_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write(src / "a.txt", "a")
    write(tmp_path / "elsewhere" / "b.txt", "b")
    (src / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    wf = workflow(
        tmp_path,
        {"containers": ["inputs"], "uploads": [{"source": "in", "container": "inputs"}]},
        {"foreach": {"container": "inputs", "pattern": "**"}, "command": "true"},
    )
    plan = build_plan(load_workflow(wf))
    assert [u.blob_name for u in plan.uploads] == ["a.txt"]
    assert plan.warnings == (
        f"{at(wf, 'source')}: storage.uploads[0].source: skipped 'more': a link to a folder (links to folders"
        " are not followed)",
    )


def test_a_link_into_the_workspace_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "a")
    stored = write(tmp_path / ".batchflow" / "storage" / "inputs" / "a.txt", "a stored blob")
    (tmp_path / "stored.txt").symlink_to(stored)
    wf = workflow(
        tmp_path,
        {"containers": ["inputs"], "uploads": [{"source": ".", "container": "inputs", "include": ["*.txt"]}]},
        {"foreach": {"container": "inputs", "pattern": "*.txt"}, "command": "true"},
    )
    plan = build_plan(load_workflow(wf))
    assert [u.blob_name for u in plan.uploads] == ["a.txt"]
    assert plan.warnings == (
        f"{at(wf, 'source')}: storage.uploads[0].source: skipped 'stored.txt': a link into the workspace"
        f" ({tmp_path / '.batchflow'}), whose files are never inputs",
    )


# ---- names starting with a dot --------------------------------------------------------------------


def test_dotfiles_are_matched_only_by_a_pattern_starting_with_a_dot(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for rel in ["a.txt", ".env", ".git/config", "sub/.hidden.txt", "sub/b.txt"]:
        write(src / rel, rel)
    wf = workflow(
        tmp_path,
        {"containers": ["inputs"], "uploads": [{"source": "in", "container": "inputs"}]},  # include: **
        {"foreach": {"container": "inputs", "pattern": "**"}, "command": "true"},
    )
    assert blobs(wf) == ["a.txt", "sub/b.txt"]

    def uploaded(*include: str) -> list[str]:
        return [rel for rel, _ in discover(src, include).files]

    assert uploaded("*") == ["a.txt"]
    assert uploaded("**", ".env") == [".env", "a.txt", "sub/b.txt"]
    assert uploaded("*", ".*") == [".env", "a.txt"]
    assert uploaded("**/.*") == [".env", "sub/.hidden.txt"]  # `**` itself never enters .git/
    assert uploaded(".git/**") == [".git/config"]
    assert [rel for rel, _ in iter_files(src, ["sub/.*", ".git/*"])] == [".git/config", "sub/.hidden.txt"]
    assert glob_match("*.txt", "a.txt") and not glob_match("*.txt", ".a.txt")
    assert glob_match(".*.txt", ".a.txt") and glob_match("[.]a.txt", ".a.txt")
    assert not glob_match("?env", ".env") and not glob_match("[!a]env", ".env")
    assert not glob_match("**/config", ".git/config") and glob_match(".git/**", ".git/config")


def test_dotfiles_are_not_output_files_unless_named(write_workflow: WriteWorkflow, tmp_path: Path) -> None:
    """The same rule for output patterns, which is Azure Batch's ("*.gif will not match .a.gif")."""
    wf = write_workflow(
        "echo out > {{ input.stem }}.out; echo hidden > .{{ input.stem }}.out",
        inputs=1,
        tasks={"outputs": [{"pattern": "*.out", "container": "inputs", "destination": "o/"}]},
        extra={
            "storage": {
                "containers": ["inputs"],
                "outputs_per_run": False,
                "uploads": [{"source": "inputs", "container": "inputs", "include": ["*.txt"]}],
            }
        },
    )
    assert main(["run", str(wf), "--quiet"]) == 0
    stored = tmp_path / ".batchflow" / "storage" / "inputs" / "o"
    assert sorted(p.name for p in stored.iterdir()) == ["item-01.out"]


# ---- an input is the task's own file --------------------------------------------------------------


@pytest.mark.e2e
def test_a_task_that_edits_its_input_leaves_the_stored_blob_unchanged(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inputs were hard links to the stored blobs: `gzip -k` refused them ("has 1 other link") and a
    task appending to its input changed the stored copy, and so every later run's input."""
    wf = write_workflow(
        "gzip -k {{ input.path }} && echo appended >> {{ input.path }} && cat {{ input.path }}",
        tasks={"outputs": [{"pattern": "{{ input.name }}.gz", "container": "inputs", "destination": "gz/"}]},
    )
    assert main(["run", str(wf), "--quiet", "--output", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["succeeded"] == 2
    stored = tmp_path / ".batchflow" / "storage" / "inputs"
    assert (stored / "item-01.txt").read_text(encoding="utf-8") == "item 1\n"
    assert (stored / "item-02.txt").read_text(encoding="utf-8") == "item 2\n"
    assert (tmp_path / "inputs" / "item-01.txt").read_text(encoding="utf-8") == "item 1\n"
    run_folder = Path(summary["run_folder"])
    stdout = summary["tasks"]["task-item-01"]["stdout"]  # where the run keeps the task's log
    assert (run_folder / stdout).read_text(encoding="utf-8") == "item 1\nappended\n"
    gz = next(stored.glob("runs/*/gz/item-01.txt.gz"))
    assert subprocess.run(["gzip", "-dc", str(gz)], capture_output=True, check=True).stdout == b"item 1\n"


def test_fetch_url_gives_a_file_of_its_own(tmp_path: Path) -> None:
    stored = write(tmp_path / "storage" / "a.txt", "stored")
    stored.chmod(0o750)
    dest = tmp_path / "wd" / "a.txt"
    assert fetch_url(stored.as_uri(), dest) == 6
    assert dest.stat().st_nlink == 1 and stored.stat().st_nlink == 1
    assert not dest.samefile(stored)
    assert dest.stat().st_mode & 0o777 == 0o750  # an executable script stays executable
    with dest.open("a", encoding="utf-8") as f:
        f.write(" and edited")
    assert stored.read_text(encoding="utf-8") == "stored"
    assert [p.name for p in dest.parent.iterdir()] == ["a.txt"]  # no temporary file left


# ---- input.path is unambiguous ----------------------------------------------------------------------


@pytest.mark.e2e
def test_ffmpeg_converts_an_input_whose_name_has_a_colon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ffmpeg -i a:b.mp4` fails ("Protocol not found"): input.path is `./a:b.mp4`."""
    ffmpeg = ffmpeg_exe()
    clip = tmp_path / "in" / "a:b.mp4"
    clip.parent.mkdir()
    subprocess.run(sample_maker().ffmpeg_args(ffmpeg, clip, 0, 1.0), check=True, capture_output=True)
    wf = workflow(
        tmp_path,
        {
            "containers": ["input", "output"],
            # A blob name may not start with a drive letter (`a:`), a relative path may.
            "uploads": [{"source": "in", "container": "input", "include": ["*.mp4"], "prefix": "clips/"}],
            "downloads": [{"container": "output", "destination": "out"}],
        },
        {
            "foreach": {"container": "input", "pattern": "clips/*.mp4"},
            "command": "{{ vars.ffmpeg }} -nostdin -hide_banner -loglevel error -y -i {{ input.path }}"
            " -vn ./{{ input.stem }}.mp3",
            "outputs": [{"pattern": "{{ input.stem }}.mp3", "container": "output", "destination": "mp3/"}],
        },
        vars={"ffmpeg": ffmpeg},
    )
    (task,) = plan_json(wf, capsys)["tasks"]
    assert task["command"].split(" -i ")[1].startswith("./a:b.mp4 ")

    assert main(["run", str(wf), "--quiet"]) == 0

    capsys.readouterr()
    mp3 = tmp_path / "out" / "mp3" / "a:b.mp3"
    assert audio_duration(mp3) == pytest.approx(probe(clip).duration, abs=0.1)


def test_a_link_cannot_bring_in_a_file_the_patterns_leave_out(tmp_path: Path) -> None:
    """`public/key -> secrets/key` with `exclude: [secrets/**]`: the exclude must hold for the link's
    target too, or a link would smuggle the excluded file into storage under another name."""
    from batchflow.inputs import discover

    (tmp_path / "secrets").mkdir()
    (tmp_path / "public").mkdir()
    (tmp_path / "secrets" / "key").write_text("private\n", encoding="utf-8")
    (tmp_path / "public" / "notes.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "public" / "key").symlink_to(tmp_path / "secrets" / "key")
    (tmp_path / "public" / "env").symlink_to(tmp_path / ".env")
    (tmp_path / ".env").write_text("TOKEN=x\n", encoding="utf-8")

    found = discover(tmp_path, ["**"], ["secrets/**"])

    assert [rel for rel, _ in found.files] == ["public/notes.txt"]
    assert found.warnings == [
        "skipped 'public/env': a link to '.env', which the include/exclude patterns leave out",
        "skipped 'public/key': a link to 'secrets/key', which the include/exclude patterns leave out",
    ]


def test_a_listed_child_is_the_path_the_slash_makes(tmp_path: Path) -> None:
    """inputs._children may take pathlib's shortcut for a name from a listing: the same Path."""
    from batchflow.inputs import _children

    for name in ["a.mp4", "a b", "é 日本", ".hidden", "x:y", "-rf"]:
        made = _children(tmp_path)(name)
        assert made == tmp_path / name
        assert str(made) == str(tmp_path / name)
        assert type(made) is type(tmp_path / name)
        assert made.parent == tmp_path and made.name == name


def test_discovery_keeps_the_version_of_each_file_its_stat_saw(tmp_path: Path) -> None:
    """Size, st_mtime_ns and st_ino of each file (a link: of its target), in the files' order: what
    task keys hash without stat'ing the inputs again."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.mp4").write_bytes(b"a")
    (tmp_path / "sub" / "b.mp4").write_bytes(b"bb")
    (tmp_path / "link.mp4").symlink_to("sub/b.mp4")
    found = discover(tmp_path, ["**"])
    assert [rel for rel, _ in found.files] == ["a.mp4", "link.mp4", "sub/b.mp4"]
    stats = [path.stat() for _, path in found.files]
    assert found.sizes == [1, 2, 2]
    assert found.mtimes_ns == [st.st_mtime_ns for st in stats]
    assert found.inodes == [st.st_ino for st in stats]
    assert found.inodes[1] == found.inodes[2] != found.inodes[0]
