"""Temporary files and folders named after their writer, so that the next run can remove a killed writer's.

A writer that is killed (``kill -9``, a power cut) cannot remove its temporary
file or folder. Each temporary name carries ``<process space>-<pid>-``: the
process space tells where that pid means the same process (this machine, since
this boot, in this pid namespace; a shared file system sees other machines'
writers too). A later run removes a leftover when its writer is known to have
ended (same process space, pid not running) or, from elsewhere, when it has not
changed for :data:`STALE_S`; a live writer's file is never removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import time
from pathlib import Path

STALE_S = 3600.0  # a writer from another process space whose leftover has not changed for this long is gone


def owner_tag(pid: int | None = None) -> str:
    """``<process space>-<pid>-``: what a temporary name carries after its prefix (this process by default)."""
    return f"{process_space()}-{os.getpid() if pid is None else pid}-"


def remove_abandoned(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``<prefix><owner tag>...`` whose writer has gone; returns them."""
    pattern = re.compile(re.escape(prefix) + r"([0-9a-f]{8})-([0-9]+)-")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    now, removed = time.time(), []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            pid = int(match[2])
            ended = match[1] == process_space() and pid != os.getpid() and not process_alive(pid)
            if ended or now - entry.lstat().st_mtime > STALE_S:
                _remove(entry)
                removed.append(entry)
        except OSError:  # gone already (its writer finished), or not ours to remove: leave it
            continue
    return removed


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs in this process space."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True


@functools.cache
def process_space() -> str:
    """A short tag for where pids mean the same process: this machine, since this boot, in this pid namespace."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
