"""One HTTP source into a resumable partial file: a request, its response, its bytes.

What arrived is kept in a hidden ``.<name>.part`` file (with a ``.part.json`` naming its
source), so a broken connection, a crash or Ctrl-C costs only the missing bytes: the same
source is asked again with an HTTP ``Range`` request. A source that cannot be reached,
stalls or is too slow (:class:`Limits`) raises :class:`SourceError`, saying why in a few
words; :mod:`lenet_lightning.download` then tries the next one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lenet_lightning.progress import Progress, duration_text, size_text
from lenet_lightning.timed_http import HeadTimeoutError, TimedHTTPHandler, TimedHTTPSHandler

CHUNK_BYTES = 1 << 16
MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class Limits:
    """When a source is given up for the next one."""

    connect_s: float = 15.0  # no connection within this long
    stall_s: float = 30.0  # not a byte for this long (before or during the transfer)
    max_left_s: float = 600.0  # the measured rate predicts more than this for the rest
    judge_after_s: float = 20.0  # the rate is measured over this long before it is judged
    # Connecting, sending the request and receiving the whole response head took longer than this: a
    # per-read timeout alone lets a server that trickles header bytes hold the run for ever.
    head_s: float = 30.0


class SourceError(Exception):
    """This source cannot deliver the file now; the message says why in a few words."""


class BrokenTransferError(SourceError):
    """The connection broke after delivering bytes: asking the same source again resumes."""


class _OversizeError(SourceError):
    """The source sent more bytes than the file has."""


class _RangeRefusedError(Exception):
    """The server cannot serve the rest of the partial file (it is longer than the file, say)."""


def host(url: str) -> str:
    """The ``host[:port]`` of ``url``, how sources are named in notices and progress."""
    try:
        return urllib.parse.urlsplit(url).netloc or url
    except ValueError:  # e.g. an unclosed IPv6 bracket: name the source by its whole URL
        return url


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


# --- one request ------------------------------------------------------------------


def transfer(url: str, partial: PartialFile, limits: Limits, size: int | None = None) -> None:
    """One HTTP request for what ``partial`` still lacks from ``url``, appended to it.

    With ``size`` (the file's known length in bytes), a source declaring another length is
    dropped before anything is written, and one sending more than that is cut off.
    """
    offset, validator = partial.resume_point(url)
    try:
        response = _open(url, offset, validator, limits)
    except _RangeRefusedError:
        partial.discard()
        raise BrokenTransferError("it refused to resume (HTTP 416), so starting again") from None
    with response:
        start, declared = _resumed_at(response, offset, partial, size)
        total = size if declared is None else declared  # undeclared: judge rate and completeness by the known size
        if start == 0:
            partial.start(url, _validator(response), total)
        try:
            with partial.path.open("ab") as out, Progress(partial.name, host(url), total, start) as progress:
                _copy(response, out, progress, limits, size)
        except _OversizeError:
            partial.discard()  # more bytes than the file has: none of them are worth resuming
            raise


def _open(url: str, offset: int, validator: str | None, limits: Limits) -> http.client.HTTPResponse:
    """Send the request (``Range`` from ``offset`` when resuming) and wait for the response headers."""
    headers = {"User-Agent": "lenet-lightning", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # the server sends the whole file if it changed since
    redirects = _RecordRedirects()
    handlers = (TimedHTTPHandler(limits.stall_s, limits.head_s), TimedHTTPSHandler(limits.stall_s, limits.head_s))
    opener = urllib.request.build_opener(redirects, *handlers)
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
    except HeadTimeoutError:
        raise SourceError(redirects.prefix() + f"sent no complete response head within {limits.head_s:g} s") from None
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


def _resumed_at(
    response: http.client.HTTPResponse, offset: int, partial: PartialFile, size: int | None
) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's total length (``None``: unknown).

    A ``206`` must continue exactly at ``offset``; a ``200`` is the whole file (a server that
    ignores ``Range``, or whose file changed), so the partial file starts again. A declared
    total other than ``size`` drops the source before a byte is written.
    """
    length = response.headers.get("Content-Length")
    if response.status != 206:
        total = int(length) if length and length.isdigit() else None
        _check_declared(total, size, partial.name)
        return 0, total
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    _check_declared(int(match.group(2)) if match else None, size, partial.name)
    if not match or int(match.group(1)) != offset or partial.info().get("total") not in (None, int(match.group(2))):
        partial.discard()
        raise BrokenTransferError("it resumed at the wrong place, so starting again")
    return offset, int(match.group(2))


def _check_declared(total: int | None, size: int | None, name: str) -> None:
    if total is not None and size is not None and total != size:
        raise SourceError(f"declares {total} bytes, but {name} has {size}")


def _validator(response: http.client.HTTPResponse) -> str | None:
    """A strong ETag, else Last-Modified: what ``If-Range`` may carry to resume safely."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _copy(response: http.client.HTTPResponse, out: Any, progress: Progress, limits: Limits, size: int | None) -> None:
    """Append the body to ``out``, dropping a source that stalls, is too slow to finish in time, or sends
    more than ``size`` bytes (when it declared no length, nothing else stops it from filling the disk)."""
    started, received = time.monotonic(), 0
    while True:
        try:
            # read1 returns whatever has arrived, so the rate is judged even while bytes trickle in.
            chunk = response.read1(CHUNK_BYTES)
        except TimeoutError:
            raise SourceError(f"sent nothing for {limits.stall_s:g} s after {size_text(progress.done)}") from None
        except (OSError, http.client.HTTPException) as error:
            raise BrokenTransferError(f"the connection broke after {size_text(progress.done)} ({error})") from None
        if not chunk:
            break
        if size is not None and progress.done + len(chunk) > size:
            raise _OversizeError(f"sent more than the {size} bytes the file has")
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
            f"too slow ({size_text(rate)}/s: {duration_text(left)} left, more than {duration_text(limits.max_left_s)})"
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
