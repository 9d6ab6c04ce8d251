"""The official archive: reading its python-pickle batches safely, unpacking and downloading it.

Batches are unpickled by :class:`BatchUnpickler`, which refuses anything but numpy's array
reconstruction, and checked before use, so a damaged or hostile file is one line naming it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from lenet_lightning.cifar10 import ARCHIVE_FOLDER, ARCHIVE_MD5, ARCHIVE_NAME, ARCHIVE_SIZE, CLASSES, IMAGE_SIZE
from lenet_lightning.download import DOWNLOAD_URL_ENV, DownloadError, check_free_space, fetch, folder_lock, source_urls
from lenet_lightning.errors import UserError
from lenet_lightning.transfer import Limits, PartialFile, file_md5


def is_unpacked(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the unpacked archive (``cifar-10-batches-py/batches.meta``)."""
    return (data_dir / ARCHIVE_FOLDER / "batches.meta").is_file()


def load_archive_split(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check the official python-pickle batches (``data_batch_1..5`` or ``test_batch``)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    batches = [read_archive_batch(folder / name) for name in names]
    images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.from_numpy(images), torch.from_numpy(np.concatenate([labels for _, labels in batches]))


# What official batches need to be unpickled: numpy's array reconstruction, nothing else.
# numpy 2 renamed numpy.core to numpy._core; the official files (Python 2 pickles) use the old name.
BATCH_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a callable or class that official CIFAR-10 batches never use."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickles official CIFAR-10 batches and refuses anything that could run code.

    Unpickling calls whatever a file names (``os.system`` included); a batch only
    names what rebuilds a numpy array (:data:`BATCH_GLOBALS`), so any other name is
    refused before it is even imported.
    """

    @override
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in BATCH_GLOBALS:
            raise RefusedGlobalError(f"{module}.{name}")
        return super().find_class(module, name)


def read_archive_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch as ``uint8`` pixels ``(N, 3072)`` and ``int64`` labels ``(N,)``, checked.

    Raises :class:`UserError` naming the file when it is missing, unreadable, would run
    code when unpickled, or does not hold ``N`` rows of 3072 pixels with ``N`` labels in 0..9.
    """
    fix = f"delete '{path.parent}' and download again, or put the official archive's {ARCHIVE_FOLDER}/ there"
    if not path.is_file():
        raise UserError(f"'{path}' is missing: {fix}")
    try:
        with path.open("rb") as file:
            # latin1 turns the Python 2 strings of the official files into what numpy expects.
            entry = BatchUnpickler(file, encoding="latin1").load()
    except RefusedGlobalError as refused:
        raise UserError(
            f"refused to read '{path}': it is not an official CIFAR-10 batch and unpickling it could run code "
            f"(it asks for {refused}); {fix}"
        ) from None
    except Exception as error:  # truncated or garbled pickles fail in many ways; every one means "not a batch"
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise UserError(f"cannot read '{path}' ({reason}): {fix}") from None
    data, labels = _batch_field(entry, "data"), _batch_field(entry, "labels")
    problem = _batch_problem(data, labels)
    if problem:
        raise UserError(f"'{path}' is not a valid CIFAR-10 batch: {problem}; {fix}")
    return np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _batch_field(entry: object, key: str) -> Any:
    """``entry[key]``; batches read as Python 3 bytes (or written by Python 3) have ``bytes`` keys."""
    if not isinstance(entry, dict):
        return None
    return entry.get(key, entry.get(key.encode()))


def _batch_problem(data: Any, labels: Any) -> str | None:
    """What is wrong with a batch's ``data`` and ``labels``, or ``None``."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        found = f"shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"'data' is {found}, expected an array of shape (N, 3072) (each row: 1024 red, green, blue values)"
    if data.dtype.kind not in "ui" or (data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255)):
        return f"'data' holds {data.dtype} values, expected 8-bit pixels (0..255)"
    if len(data) == 0:
        return "it holds no images"  # an empty test split would fail only after the whole training run
    values = _label_array(labels)
    if values is None or values.ndim != 1 or (values.size and values.dtype.kind not in "ui"):
        return "'labels' is not a list of class numbers"
    if len(values) != len(data):
        return f"it holds {len(data)} images but {len(values)} labels"
    if values.size and (values.min() < 0 or values.max() >= len(CLASSES)):
        return f"its labels range from {values.min()} to {values.max()}, expected 0..{len(CLASSES) - 1}"
    return None


def _label_array(labels: Any) -> np.ndarray | None:
    """``labels`` as an array, or ``None`` when it is not a list or array (or a ragged list numpy refuses)."""
    if not isinstance(labels, list | np.ndarray):
        return None
    try:
        return np.asarray(labels)
    except (ValueError, TypeError):  # ragged nesting: numpy refuses to make an array of it
        return None


def download_archive(
    data_dir: Path,
    urls: Sequence[str] | None = None,
    md5: str | None = None,
    limits: Limits | None = None,
    size: int | None = None,
) -> None:
    """Download, verify and unpack the official archive into ``data_dir``.

    ``urls`` are tried in order (``None``: ``$LENET_LIGHTNING_DOWNLOAD_URL``, then the
    built-in :data:`~lenet_lightning.download.MIRRORS`); a source is dropped for the next
    when it fails, stalls or is too slow (``limits``), and whatever serves the archive,
    it must have the md5 ``md5`` (default: the official archive's). One process per
    folder downloads; others wait for it and then use its result. An unfinished
    download stays only as a hidden ``.part`` file that the next run resumes, and
    unpacking happens in a temporary folder renamed into place when complete, so
    nothing a later run could take for data is ever left half-done in ``data_dir``.

    A source declaring a length other than ``size`` bytes is dropped before anything is
    written (default: the official archive's size, checked only with the official md5), and
    the disk must have room for the archive and its unpacked batches before a byte is fetched.
    """
    if md5 is None:
        md5, size = ARCHIVE_MD5, size or ARCHIVE_SIZE
    urls = source_urls() if urls is None else list(urls)
    with folder_lock(data_dir):
        if is_unpacked(data_dir):
            return  # another process downloaded it while this one waited
        _remove_abandoned_scratch(data_dir)
        partial = PartialFile(data_dir, ARCHIVE_NAME)
        expected = size or ARCHIVE_SIZE
        check_free_space(data_dir, max(expected - partial.size(), 0) + _unpacked_bytes(expected), "downloading")
        try:
            source = fetch(urls, partial, md5, limits or Limits(), size)
        except DownloadError as failed:
            raise UserError(download_failed_message(data_dir, failed.problems, md5)) from None
        try:
            with _scratch_folder(data_dir) as scratch:
                _unpack(partial.path, scratch, data_dir, source=source)
        except UserError:
            partial.discard()  # md5-verified yet not a CIFAR-10 archive: downloading it again cannot help
            raise
        partial.discard()


def download_failed_message(data_dir: Path, problems: list[tuple[str, str]], md5: str) -> str:
    """A summary line, one line per source with what went wrong, then what to do."""
    lines = [f"no CIFAR-10 data in '{data_dir}', and no source delivered {ARCHIVE_NAME}:"]
    lines += [f"  {url}: {problem}" for url, problem in problems] or ["  (no source to try)"]
    lines.append(
        f"what to do: add a mirror with --download-url URL[,URL...] (or ${DOWNLOAD_URL_ENV}; any copy with md5 "
        f"{md5} works), or put {ARCHIVE_NAME} (or its {ARCHIVE_FOLDER}/) into '{data_dir}' by hand, or point "
        "--data-dir at an image folder with train/<class>/ and test/<class>/"
    )
    return "\n".join(lines)


def unpack_local_archive(data_dir: Path, md5: str | None = None) -> None:
    """Verify and unpack a ``cifar-10-python.tar.gz`` that was put into ``data_dir`` by hand."""
    archive, md5 = data_dir / ARCHIVE_NAME, md5 or ARCHIVE_MD5
    with folder_lock(data_dir):
        if is_unpacked(data_dir):
            return  # another process unpacked it while this one waited
        _remove_abandoned_scratch(data_dir)
        digest = file_md5(archive)
        if digest != md5:
            raise UserError(
                f"'{archive}' is not the official CIFAR-10 archive (md5 {digest}, expected {md5}): "
                "replace it with the official file, or delete it to download again"
            )
        check_free_space(data_dir, _unpacked_bytes(archive.stat().st_size), "unpacking")
        with _scratch_folder(data_dir) as scratch:
            _unpack(archive, scratch, data_dir, source=str(archive))


# The official archive's batches take about 9% more room unpacked (186 MB) than packed (170.5 MB).
UNPACKED_RATIO = 1.1
SPACE_MARGIN_BYTES = 20_000_000  # room left for the file system and the rest of the run


def _unpacked_bytes(archive_bytes: int) -> int:
    return int(archive_bytes * UNPACKED_RATIO) + SPACE_MARGIN_BYTES


def _remove_abandoned_scratch(data_dir: Path) -> None:
    """Remove the unpacking folders of runs that were killed while unpacking.

    Only called under the folder's lock, which every unpacking run holds until its scratch
    folder is gone: any scratch folder found then belongs to no live run.
    """
    for scratch in data_dir.glob(".unpack-*"):
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _scratch_folder(data_dir: Path) -> Iterator[Path]:
    """A temporary folder inside ``data_dir`` (same file system, so results can be renamed into place)."""
    try:
        scratch = tempfile.TemporaryDirectory(dir=data_dir, prefix=".unpack-")
    except OSError as error:
        raise UserError(
            f"cannot write to data folder '{data_dir}' ({error.strerror or error}): pass a writable --data-dir"
        ) from None
    with scratch as folder:
        yield Path(folder)


def _unpack(archive: Path, scratch: Path, data_dir: Path, source: str) -> None:
    unpacked = scratch / "unpacked"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot unpack the archive from {source} ({error}): use the official archive") from None
    if not (unpacked / ARCHIVE_FOLDER / "batches.meta").is_file():
        raise UserError(f"the archive from {source} holds no {ARCHIVE_FOLDER}/: use the official one")
    target = data_dir / ARCHIVE_FOLDER
    if target.exists():
        shutil.rmtree(target)
    os.replace(unpacked / ARCHIVE_FOLDER, target)
