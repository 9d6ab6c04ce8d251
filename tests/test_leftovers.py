"""Temporary files of killed writers are removed by the next writer in the same folder, live writers' never."""

from __future__ import annotations

import os
import subprocess
import sys

from lenet_lightning.export import staging_folder
from lenet_lightning.leftovers import owner_tag, process_alive, remove_abandoned


def dead_pid() -> int:
    """The id of a process that has ended (it may be reused later, but not within a test)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_leftovers_of_ended_writers_are_removed(tmp_path):
    gone, alive = dead_pid(), os.getppid()
    assert not process_alive(gone) and process_alive(alive)
    (tmp_path / f".x.tmp-{owner_tag(gone)}a").write_text("killed writer")
    (tmp_path / f".x.tmp-{owner_tag(gone)}b").mkdir()
    (tmp_path / f".x.tmp-{owner_tag(alive)}c").write_text("live writer")
    (tmp_path / f"x.tmp-{owner_tag(gone)}d").write_text("not ours: another prefix")
    removed = remove_abandoned(tmp_path, ".x.tmp-")
    assert sorted(p.name for p in removed) == [f".x.tmp-{owner_tag(gone)}a", f".x.tmp-{owner_tag(gone)}b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".x.tmp-{owner_tag(alive)}c", f"x.tmp-{owner_tag(gone)}d"]


def test_an_export_removes_the_staging_folder_a_killed_export_left(tmp_path):
    stale = tmp_path / f".bundle.export-{owner_tag(dead_pid())}abc"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half written")
    with staging_folder(tmp_path / "bundle") as folder:
        assert folder.name.startswith(f".bundle.export-{owner_tag()}") and not stale.exists()
    assert list(tmp_path.iterdir()) == []
