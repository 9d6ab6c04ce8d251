"""Temporary files named after the process writing them, so that the next run can remove a killed writer's.

A writer that is killed (``kill -9``, a power cut) cannot remove its temporary
file or folder. Each temporary name carries its writer's process id; a later run
removes only the leftovers whose writer is no longer running, never those of a
live writer (another run working in the same folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


def temporary_name(prefix: str) -> str:
    """``<prefix><pid>-``: the start of a temporary name owned by this process."""
    return f"{prefix}{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``<prefix><pid>-...`` whose process has ended; returns them."""
    pattern = re.compile(re.escape(prefix) + r"([0-9]+)-")
    removed = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match and int(match[1]) != os.getpid() and not process_alive(int(match[1])):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
