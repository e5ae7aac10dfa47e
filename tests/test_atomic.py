"""Atomic writes, output sets, and the checks of output places (mucosa.atomic)."""

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mucosa import atomic
from mucosa.atomic import OutputError, OutputSet, WriteError


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or staging folders left in ``folder``."""
    return sorted(p.name for p in folder.rglob(".*"))


def test_output_set_replaces_an_earlier_result_whole(tmp_path):
    out = tmp_path / "out"
    with OutputSet(out, ("a.csv", "b.csv", "*.png")) as staged:
        staged.path("a.csv").write_text("old a")
        staged.path("b.csv").write_text("old b")
        staged.path("old.png").write_text("old figure")
    (out / "notes.txt").write_text("the user's")
    with OutputSet(out, ("a.csv", "b.csv", "*.png")) as staged:
        staged.path("a.csv").write_text("new a")
        staged.path("new.png").write_text("new figure")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "new.png", "notes.txt"]
    assert (out / "a.csv").read_text() == "new a"  # b.csv and old.png were the earlier run's: gone
    assert (out / "notes.txt").read_text() == "the user's"  # not one of the command's outputs: kept
    assert leftovers(out) == []


def test_a_failed_output_set_changes_nothing(tmp_path):
    out = tmp_path / "out"
    with OutputSet(out, ("a.csv", "b.csv")) as staged:
        staged.path("a.csv").write_text("old a")
        staged.path("b.csv").write_text("old b")
    with pytest.raises(RuntimeError), OutputSet(out, ("a.csv", "b.csv")) as staged:
        staged.path("a.csv").write_text("half of a new run")
        raise RuntimeError("the run broke")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.csv": "old a", "b.csv": "old b"}
    assert leftovers(out) == []
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(RuntimeError), OutputSet(fresh, ("a.csv",)) as staged:
        staged.path("a.csv").write_text("x")
        raise RuntimeError("the run broke")
    assert not fresh.exists()  # a folder made for a run that wrote nothing is not left behind


def test_a_write_error_in_an_output_set_names_the_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=r"cannot write .*out: No space left on device") as caught, \
            OutputSet(out, ("a.csv",)):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a full disk gives a write()
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(out) == []


def test_stale_staging_folders_of_killed_runs_are_removed_young_ones_kept(tmp_path):
    out = tmp_path / "out"
    old, young = out / ".staging-killed", out / ".staging-live"
    old.mkdir(parents=True)
    young.mkdir()
    (old / "a.csv").write_text("x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    with OutputSet(out, ("a.csv",)) as staged:
        staged.path("a.csv").write_text("y")
    assert not old.exists() and young.is_dir()


def test_temporary_beside_keeps_the_old_file_when_the_disk_fills(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("earlier")
    with pytest.raises(WriteError, match=r"cannot write .*result.csv: No space left on device"), \
            atomic.temporary_beside(target, "w") as handle:
        handle.write("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "earlier"
    assert leftovers(tmp_path) == []


def test_an_error_of_another_file_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic.temporary_beside(tmp_path / "x") as handle:
        handle.write(b"x")
        open(tmp_path / "missing-input")  # noqa: SIM115  (an input, not the file being written)
    assert leftovers(tmp_path) == []


def test_folder_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        atomic.check_writable_folder(tmp_path / "file")
    with pytest.raises(OutputError, match=r"file/sub: .*file is a file, not a folder"):
        atomic.check_writable_folder(tmp_path / "file" / "sub")
    assert atomic.check_writable_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert leftovers(tmp_path) == []  # nor leaves its probe behind


def test_file_checks(tmp_path):
    with pytest.raises(OutputError, match="it is a folder, not a file"):
        atomic.check_writable_file(tmp_path)
    if Path("/dev/null").exists():
        with pytest.raises(OutputError, match="not a regular file"):
            atomic.check_writable_file("/dev/null")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic.check_writable_file(tmp_path / "file" / "t.csv", "timeline")
    assert atomic.check_writable_file(tmp_path / "file") == tmp_path / "file"  # replacing a file is fine


def test_a_read_only_or_full_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    def refuse(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder / ".mucosa-probe-x"))

    monkeypatch.setattr(atomic, "_probe", refuse)
    with pytest.raises(OutputError, match=r"cannot write the output folder .*out \(in .*\): Read-only file system"):
        atomic.check_writable_folder(tmp_path / "out")
    with pytest.raises(OutputError, match=r"cannot write the output folder .*out"):
        OutputSet(tmp_path / "out").__enter__()
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            atomic.check_writable_folder(locked / "out")
    finally:
        locked.chmod(0o755)


def test_remove_stale_keeps_young_files(tmp_path):
    (tmp_path / "old.tmp").write_text("x")
    (tmp_path / "young.tmp").write_text("x")
    os.utime(tmp_path / "old.tmp", (time.time() - 3600,) * 2)
    assert atomic.remove_stale(tmp_path, ("*.tmp",)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["young.tmp"]


LIMITED = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from mucosa import atomic
    target = Path(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
    try:
        {call}
    except atomic.WriteError as error:
        print(error)
""")


@pytest.mark.parametrize("call", ["atomic.write_bytes(target, bytes(200_000))",
                                  pytest.param("import torch; atomic.write_torch(torch.zeros(100_000), target)",
                                               marks=pytest.mark.slow)])  # a process that imports PyTorch
def test_the_file_size_limit_is_one_line_and_leaves_the_old_file(tmp_path, call):
    target = tmp_path / "big.bin"
    target.write_text("earlier")
    script = LIMITED.format(call=call)  # Python ignores SIGXFSZ: past the limit, a write fails with EFBIG
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cannot write {target}: File too large"), done.stdout
    assert target.read_text() == "earlier"
    assert leftovers(tmp_path) == []
