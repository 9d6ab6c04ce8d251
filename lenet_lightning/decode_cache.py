"""The decoded-image cache: one checksummed file per image folder, never a reason for a run to fail.

A cache that is missing, damaged or cannot be written costs only decoding time: reading
problems are a notice, writing problems a one-line warning, and the run goes on.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenet_lightning.cifar10 import IMAGE_SIZE
from lenet_lightning.leftovers import owner_tag, remove_abandoned
from lenet_lightning.progress import notice


def split_digest(images: Tensor, labels: Tensor) -> str:
    """sha256 of the images' and labels' bytes: the cache's checksum."""
    digest = hashlib.sha256(images.contiguous().numpy().data)
    digest.update(labels.contiguous().numpy().data)
    return digest.hexdigest()


def read_cache(path: Path, labels: Tensor) -> Tensor | None:
    """The cached images of a folder with these ``labels``, or ``None`` when there is no intact cache.

    A cache that is truncated, overwritten, unreadable or incomplete gets one line on
    stderr and is ignored, so the caller decodes the images again and replaces it.
    """
    try:
        if not path.exists():
            return None
        cached = torch.load(path, weights_only=True)
    except Exception as error:  # whatever makes a cache unreadable, the cure is the same: decode again
        problem: str | None = f"unreadable: {type(error).__name__}"
    else:
        problem = _cache_problem(cached, labels)
    if problem is None:
        return cached["images"]
    notice(f"the decoded-image cache '{path}' is damaged ({problem}): decoding the images again")
    return None


def _cache_problem(cached: Any, labels: Tensor) -> str | None:
    """What is wrong with a loaded cache for a folder with these ``labels``, or ``None``."""
    if not isinstance(cached, dict) or not {"images", "labels", "sha256"} <= cached.keys():
        return "images, labels or checksum missing"
    images, cached_labels = cached["images"], cached["labels"]
    expected_shape = (len(labels), 3, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.shape != expected_shape:
        return "images of the wrong type or number"
    if not isinstance(cached_labels, Tensor) or cached_labels.dtype != labels.dtype:
        return "labels of the wrong type"
    if not torch.equal(cached_labels, labels):
        return "labels that differ from the folder's"
    if cached["sha256"] != split_digest(images, labels):
        return "checksum mismatch: its bytes changed after it was written"
    return None


def write_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    """Save decoded images with their checksum; when that fails, say so in one line and go on.

    The file is written under a temporary name unique to this writer, then renamed, so a
    killed run never leaves a truncated cache and concurrent writers never remove each
    other's files; a failed write removes its own temporary file, and those of killed
    writers are removed by the next writer (:func:`~lenet_lightning.leftovers.remove_abandoned`). Whatever
    fails (a full disk, a read-only folder, a name too long), the run goes on without it.
    """
    tmp = tmp_path_for(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(path.parent, TMP_PREFIX)
        try:
            with tmp.open("wb") as file:
                torch.save({"images": images, "labels": labels, "sha256": split_digest(images, labels)}, file)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    # torch.save raises OSError writing to a file object, RuntimeError (its zip writer) in some other failures.
    except (OSError, RuntimeError) as error:
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error).splitlines()[0]
        if (path.parent, reason) in _WARNED:
            return  # the test split fails like the training split did: one warning says it
        _WARNED.add((path.parent, reason))
        notice(
            f"warning: cannot write the decoded-image cache '{path}' ({reason}): going on "
            "without it, the next run decodes the images again; pass a writable --cache-dir"
        )


_WARNED: set[tuple[Path, str]] = set()  # (cache folder, reason) already warned about by this process


# A temporary file is ".tmp-<owner tag><random>-<cache name>" (see lenet_lightning.leftovers).
TMP_PREFIX = ".tmp-"


def tmp_path_for(path: Path, pid: int) -> Path:
    """The temporary file a process with ``pid`` (here) writes ``path`` through."""
    return path.with_name(f"{TMP_PREFIX}{owner_tag(pid)}{uuid.uuid4().hex[:8]}-{path.name}")


# Cache names keep the data folder's name to be recognisable, cut short and hashed when long: a file
# name may have at most 255 bytes, and a data folder's name alone may have that many.
READABLE_NAME_BYTES = 100


def cache_name(folder: Path, fingerprint: str) -> str:
    """``<data folder>-<split>-<fingerprint>.pt``, under 200 bytes whatever the folder's name."""
    stem = f"{folder.resolve().parent.name}-{folder.name}"
    encoded = stem.encode()
    if len(encoded) > READABLE_NAME_BYTES:
        short = encoded[: READABLE_NAME_BYTES - 20].decode(errors="ignore")  # never half a character
        stem = f"{short}~{hashlib.sha256(encoded).hexdigest()[:16]}"
    return f"{stem}-{fingerprint}.pt"
