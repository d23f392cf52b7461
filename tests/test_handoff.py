"""apis/handoff.py: request bodies in shared memory, and the folders a killed server leaves behind."""

import os
import subprocess
import sys

from apis.handoff import PREFIX, Handoff, sweep_orphans


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_servers_folder_is_swept_and_a_live_ones_kept(tmp_path):
    orphan = tmp_path / f"{PREFIX}{dead_pid()}-abc"
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{PREFIX}cache"  # no pid in the name: not ours to judge
    for folder in (orphan, live, unrelated):
        folder.mkdir()
        (folder / "body").write_bytes(b"x" * 10)
    assert sweep_orphans(str(tmp_path)) == [str(orphan)]
    assert not orphan.exists() and live.exists() and unrelated.exists()


def test_folder_name_carries_the_pid_and_close_removes_it():
    handoff = Handoff()
    try:
        assert os.path.basename(handoff.directory).startswith(f"{PREFIX}{os.getpid()}-")
        with handoff.hold(b"image bytes") as blob:
            assert blob.read() == b"image bytes"
        assert not os.path.exists(blob.path)
    finally:
        handoff.close()
    assert not os.path.exists(handoff.directory)
