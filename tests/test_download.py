"""Downloading the official archive: mirrors with failover, progress, resume, one download per folder.

Every source is a local HTTP server on 127.0.0.1 serving a tiny archive in the official
format; its md5 is passed in, and the thresholds are shrunk so each test takes seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lenet_lightning import CIFAR10DataModule, download, sources
from lenet_lightning import archive as official
from lenet_lightning.cli import main, run
from lenet_lightning.download import Limits
from lenet_lightning.errors import SettingError, UserError
from tests.conftest import closed_port_url, error_line, write_cifar_archive, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
FAST = Limits(connect_s=2.0, head_s=1.5, stall_s=0.5, max_left_s=1.0, judge_after_s=0.3)
HTML = b"<!doctype html><html><body>Please sign in to download this file.</body></html>"


class Mirror:
    """A local HTTP server for one archive; each request takes the next answer of ``plan`` ("good" after it).

    Answers: good (honours ``Range``), ignore-range, slow-head (a header byte every 0.2 s), wrong-length
    (declares 5 GB), wrong-range-total (a 206 for a longer file), no-length-oversize (no length, too many
    bytes), truncated (half the promised bytes, then closes), stall (half, then nothing), trickle (a few kB/s),
    silent (no response at all), held (good once ``release`` is set), missing (404), range-not-satisfiable
    (416), html (a page, status 200), corrupt (one byte flipped), redirect-closed (301 to a closed port).
    ``log`` has, per request, the ``Range`` header it carried and the body bytes sent.
    """

    def __init__(self, archive: bytes, plan: list[str]) -> None:
        self.archive = archive
        self.plan = plan
        self.log: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.closing = threading.Event()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                entry = {"range": self.headers.get("Range"), "sent": 0}
                mirror.log.append(entry)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up on us
                    mirror.answer(self, mirror.plan.pop(0) if mirror.plan else "good", entry)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cifar-10-python.tar.gz"
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, handler: http.server.BaseHTTPRequestHandler, answer: str, entry: dict[str, Any]) -> None:
        if answer in ("missing", "range-not-satisfiable"):
            handler.send_error(404 if answer == "missing" else 416)
            return
        if answer == "redirect-closed":
            handler.send_response(301)
            handler.send_header("Location", closed_port_url())
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if answer == "silent":
            self.closing.wait(5)
            return
        if answer == "slow-head":  # a status line, then one header byte at a time, never a whole head
            handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
            while not self.closing.wait(0.2):
                handler.wfile.write(b"X")
            return
        if answer == "held":
            self.release.wait(30)
        body = HTML if answer == "html" else self.archive
        if answer == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if wanted and answer != "ignore-range":
            start = int(wanted.group(1))
            total = len(body) + (1000 if answer == "wrong-range-total" else 0)
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{total}")
        else:
            handler.send_response(200)
        if answer == "no-length-oversize":  # no Content-Length: the body ends when the connection closes
            body += b"\0" * 100_000
        else:
            handler.send_header("Content-Length", str(5_000_000_000 if answer == "wrong-length" else len(body) - start))
        handler.send_header("ETag", '"v1"')
        handler.end_headers()
        self.send(handler, answer, body[start:], entry)

    def send(
        self, handler: http.server.BaseHTTPRequestHandler, answer: str, rest: bytes, entry: dict[str, Any]
    ) -> None:
        if answer in ("truncated", "stall"):
            rest = rest[: len(rest) // 2]
        step, pause = (512, 0.05) if answer == "trickle" else (len(rest) or 1, 0.0)
        for begin in range(0, len(rest), step):
            if self.closing.is_set():
                return
            handler.wfile.write(rest[begin : begin + step])
            entry["sent"] += len(rest[begin : begin + step])
            time.sleep(pause)
        if answer == "stall":
            self.closing.wait(5)

    def close(self) -> None:
        self.closing.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    root = write_cifar_archive(tmp_path_factory.mktemp("tarball"), train_per_class=4, test_per_class=2)
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path.read_bytes()


@pytest.fixture
def md5(archive) -> str:
    return hashlib.md5(archive).hexdigest()


@pytest.fixture
def serve(archive) -> Iterator[Callable[..., Mirror]]:
    """``serve("stall", "good")``: a new local mirror answering its requests in that order."""
    started: list[Mirror] = []

    def start(*plan: str) -> Mirror:
        started.append(Mirror(archive, list(plan)))
        return started[-1]

    yield start
    for mirror in started:
        mirror.close()


@pytest.fixture
def official_md5_is(archive, md5, monkeypatch) -> None:
    """Code that uses the default md5 (the DataModule, the command line) accepts the tiny archive."""
    monkeypatch.setattr(official, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(official, "ARCHIVE_SIZE", len(archive))


def visible(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if not p.name.startswith("."))


def assert_clean(data_dir: Path) -> None:
    """Nothing a later run could take for data: no visible entry, only hidden download state."""
    assert not data_dir.exists() or visible(data_dir) == [], visible(data_dir)
    assert sources.detect_source(data_dir) is None


def assert_unpacked(data_dir: Path) -> None:
    """The archive's folder and nothing else but the lock: no partial download, no temp folder."""
    assert sorted(p.name for p in data_dir.iterdir()) == [".cifar-10.lock", "cifar-10-batches-py"]
    assert sources.detect_source(data_dir) == "archive"


def dropped_notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dropped ")]


# --- failover -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param("redirect-closed", r"redirected to 127\.0\.0\.1:\d+: connection refused", id="dead-redirect"),
        pytest.param("trickle", r"too slow \(\d+ kB/s: \d+ s left, more than 1 s\)", id="trickle"),
        pytest.param("stall", r"sent nothing for 0\.5 s after \d+ kB", id="stall-mid-transfer"),
        pytest.param("silent", r"sent nothing for 0\.5 s", id="no-response"),
        pytest.param("slow-head", r"sent no complete response head within 1\.5 s", id="trickled-head"),
        pytest.param("missing", r"HTTP 404 Not Found", id="404"),
        pytest.param("html", r"sent a different file \(md5 [0-9a-f]{32}, expected [0-9a-f]{32}\)", id="html-with-200"),
        pytest.param("corrupt", r"sent a different file \(md5 [0-9a-f]{32}, expected [0-9a-f]{32}\)", id="corrupt"),
    ],
)
def test_a_failing_source_is_dropped_in_one_line_for_the_next(answer, reason, serve, md5, tmp_path, capsys):
    bad, good = serve(answer), serve()
    started = time.monotonic()
    official.download_archive(tmp_path / "data", [bad.url, good.url], md5, limits=FAST)
    assert time.monotonic() - started < 5
    dropped = dropped_notices(capsys)
    assert len(dropped) == 1 and re.fullmatch(rf"dropped {bad.host}: {reason}; trying {good.host}", dropped[0])
    assert good.log == [{"range": None, "sent": len(good.archive)}]  # another source's partial is not resumed
    assert_unpacked(tmp_path / "data")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param("wrong-length", r"declares 5000000000 bytes, but cifar-10-python\.tar\.gz has \d+", id="200"),
        pytest.param("no-length-oversize", r"sent more than the \d+ bytes the file has", id="no-length"),
    ],
)
def test_a_source_with_another_size_is_dropped_and_keeps_nothing(answer, reason, serve, md5, tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as caught:
        official.download_archive(data_dir, [serve(answer).url], md5, limits=FAST, size=len(serve().archive))
    assert re.fullmatch(rf"  http://\S+: {reason}", str(caught.value).splitlines()[1])
    assert not (data_dir / ".cifar-10-python.tar.gz.part").exists()
    assert_clean(data_dir)


def test_a_resumed_transfer_of_another_total_is_dropped(serve, md5, tmp_path, capsys):
    bad, good = serve("truncated", "wrong-range-total"), serve()
    official.download_archive(tmp_path / "data", [bad.url, good.url], md5, limits=FAST, size=len(bad.archive))
    (dropped,) = dropped_notices(capsys)
    assert dropped == f"dropped {bad.host}: declares {len(bad.archive) + 1000} bytes, but cifar-10-python.tar.gz " + (
        f"has {len(bad.archive)}; trying {good.host}"
    )
    assert_unpacked(tmp_path / "data")


def test_the_official_archive_size_is_checked_by_default(serve, md5, tmp_path, monkeypatch):
    monkeypatch.setattr(official, "ARCHIVE_MD5", md5)  # the md5 of the tiny archive, but the official size
    mirror = serve()
    declared = rf"declares {len(mirror.archive)} bytes, but cifar-10-python\.tar\.gz has 170498071"
    with pytest.raises(UserError, match=declared):
        official.download_archive(tmp_path / "data", [mirror.url], limits=FAST)


def disk_with_free_bytes(free: int) -> Any:
    """What ``shutil.disk_usage`` says for a large disk with only ``free`` bytes left."""
    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)


def test_no_room_for_the_archive_is_one_line_before_downloading(serve, md5, tmp_path, monkeypatch):
    mirror, data_dir = serve(), tmp_path / "data"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_with_free_bytes(50_000_000))
    with pytest.raises(UserError) as caught:
        official.download_archive(data_dir, [mirror.url], md5, limits=FAST, size=170_498_071)
    assert str(caught.value) == (
        f"not enough free space in '{data_dir}' for downloading CIFAR-10: it needs 378.0 MB, 50.0 MB are free; "
        "free some space there, or pass a --data-dir on a disk with more room"
    )
    assert mirror.log == []
    assert_clean(data_dir)


def test_no_room_to_unpack_an_archive_put_there_by_hand_is_one_line(archive, md5, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_with_free_bytes(1000))
    needs = rf"^not enough free space in '{re.escape(str(data_dir))}' for unpacking CIFAR-10: it needs 20\.\d MB, 1 kB"
    with pytest.raises(UserError, match=needs):
        official.unpack_local_archive(data_dir, md5)
    assert visible(data_dir) == ["cifar-10-python.tar.gz"]


def test_the_last_source_is_never_dropped_for_being_slow(serve, md5, tmp_path, capsys):
    impatient = Limits(stall_s=2.0, max_left_s=1e-9, judge_after_s=0.0)  # every source is "too slow"
    first, last = serve(), serve()
    official.download_archive(tmp_path / "data", [first.url, last.url], md5, limits=impatient)
    dropped = dropped_notices(capsys)
    assert len(dropped) == 1 and dropped[0].startswith(f"dropped {first.host}: too slow")
    assert last.log == [{"range": None, "sent": len(last.archive)}]
    assert_unpacked(tmp_path / "data")


def test_all_sources_failing_gives_one_line_each_then_what_to_do(serve, md5, tmp_path):
    failing = [serve("redirect-closed"), serve("missing"), serve("html"), serve("truncated", "truncated", "truncated")]
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as caught:
        official.download_archive(data_dir, [mirror.url for mirror in failing], md5, limits=FAST)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"no CIFAR-10 data in '{data_dir}', and no source delivered cifar-10-python.tar.gz:"
    assert re.fullmatch(rf"  {re.escape(failing[0].url)}: redirected to 127\.0\.0\.1:\d+: connection refused", lines[1])
    assert lines[2] == f"  {failing[1].url}: HTTP 404 Not Found"
    assert re.fullmatch(
        rf"  {re.escape(failing[2].url)}: sent a different file \(md5 [0-9a-f]{{32}}, expected {md5}\)", lines[3]
    )
    size, kept = len(failing[3].archive), 0
    for _ in range(3):  # each attempt resumes, then gets half of the rest
        kept += (size - kept) // 2
    assert lines[4] == f"  {failing[3].url}: the connection closed after {kept} of {size} bytes"
    assert lines[5].startswith("what to do: add a mirror with --download-url URL[,URL...] (or $LENET_LIGHTNING_")
    assert f"put cifar-10-python.tar.gz (or its cifar-10-batches-py/) into '{data_dir}' by hand" in lines[5]
    assert "image folder" in lines[5] and len(lines) == 6
    assert_clean(data_dir)


def test_a_bad_download_leaves_an_existing_data_folder_as_it_was(serve, md5, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="HTTP 404"):
        official.download_archive(data_dir, [serve("missing").url], md5, limits=FAST)
    assert visible(data_dir) == ["notes.txt"] and (data_dir / "notes.txt").read_text() == "mine"


# --- resume -------------------------------------------------------------------------


def test_a_broken_connection_is_resumed_with_range(serve, md5, tmp_path, capsys):
    mirror = serve("truncated", "good")
    official.download_archive(tmp_path / "data", [mirror.url], md5, limits=FAST)
    first, second = mirror.log
    assert first["sent"] == len(mirror.archive) // 2
    assert second == {"range": f"bytes={first['sent']}-", "sent": len(mirror.archive) - first["sent"]}
    assert f"{mirror.host}: the connection closed after" in capsys.readouterr().err
    assert_unpacked(tmp_path / "data")


def test_ctrl_c_leaves_a_hidden_partial_file_that_the_next_run_resumes(serve, md5, tmp_path, monkeypatch):
    mirror, data_dir = serve(), tmp_path / "data"
    update = download.Progress.update

    def ctrl_c_midway(progress: download.Progress, count: int) -> None:
        update(progress, count)
        if progress.done >= len(mirror.archive) // 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(download.Progress, "update", ctrl_c_midway)
    with pytest.raises(KeyboardInterrupt):
        official.download_archive(data_dir, [mirror.url], md5, limits=FAST)
    assert_clean(data_dir)
    kept = (data_dir / ".cifar-10-python.tar.gz.part").stat().st_size
    assert 0 < kept < len(mirror.archive)
    monkeypatch.setattr(download.Progress, "update", update)
    official.download_archive(data_dir, [mirror.url], md5, limits=FAST)
    assert mirror.log[1] == {"range": f"bytes={kept}-", "sent": len(mirror.archive) - kept}
    assert_unpacked(data_dir)


def test_a_server_that_ignores_range_sends_it_all_again_and_that_is_used(serve, md5, tmp_path):
    mirror = serve("truncated", "ignore-range")
    official.download_archive(tmp_path / "data", [mirror.url], md5, limits=FAST)
    assert mirror.log[1] == {"range": f"bytes={len(mirror.archive) // 2}-", "sent": len(mirror.archive)}
    assert_unpacked(tmp_path / "data")


def test_a_server_that_cannot_resume_is_asked_for_the_whole_file_again(serve, md5, tmp_path):
    mirror = serve("truncated", "range-not-satisfiable", "good")
    official.download_archive(tmp_path / "data", [mirror.url], md5, limits=FAST)
    assert [entry["range"] for entry in mirror.log] == [None, f"bytes={len(mirror.archive) // 2}-", None]
    assert_unpacked(tmp_path / "data")


def test_a_download_complete_before_a_crash_is_unpacked_without_downloading_again(archive, md5, tmp_path):
    data_dir = tmp_path / "data"
    partial = download.PartialFile(data_dir, "cifar-10-python.tar.gz")
    data_dir.mkdir()
    partial.start(closed_port_url(), None, len(archive))
    partial.path.write_bytes(archive)  # then the run was killed while unpacking
    official.download_archive(data_dir, [closed_port_url()], md5, limits=FAST)
    assert_unpacked(data_dir)


def test_the_scratch_folder_of_a_run_killed_while_unpacking_is_removed_by_the_next(serve, md5, tmp_path):
    data_dir = tmp_path / "data"
    abandoned = data_dir / ".unpack-k1ll3d" / "unpacked" / "cifar-10-batches-py"
    abandoned.mkdir(parents=True)
    (abandoned / "data_batch_1").write_bytes(b"half")
    official.download_archive(data_dir, [serve().url], md5, limits=FAST)
    assert_unpacked(data_dir)  # the lock and the data: no scratch folder left


# --- one download per folder -------------------------------------------------------


def test_two_processes_downloading_into_one_folder_download_once(serve, md5, tmp_path):
    mirror, data_dir = serve("held"), tmp_path / "data"
    # The package's __init__ imports Lightning (seconds on a busy machine); the download needs only
    # lenet_lightning.archive, so each process imports that module alone.
    code = (
        "import sys, types; from pathlib import Path; package = types.ModuleType('lenet_lightning'); "
        "package.__path__ = [sys.argv[4]]; sys.modules['lenet_lightning'] = package; "
        "from lenet_lightning.archive import download_archive; "
        "download_archive(Path(sys.argv[1]), [sys.argv[2]], sys.argv[3])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir), mirror.url, md5, str(ROOT / "lenet_lightning")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [[], []]  # stderr lines of each process
    readers = [
        threading.Thread(target=lambda p=p, e=e: e.extend(p.stderr), daemon=True)
        for p, e in zip(processes, errors, strict=True)
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 60
    while not any("waiting for it to finish" in line for lines in errors for line in lines):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), errors
        time.sleep(0.05)
    mirror.release.set()  # only now may the one download finish
    assert [p.wait(timeout=60) for p in processes] == [0, 0], errors
    assert len(mirror.log) == 1
    assert_unpacked(data_dir)


# --- where the data comes from ------------------------------------------------------


def test_given_urls_come_first_then_the_built_in_mirrors_each_once(monkeypatch):
    monkeypatch.setattr(download, "MIRRORS", ("https://a.example/x", "https://b.example/x"))
    assert download.source_urls() == ["https://a.example/x", "https://b.example/x"]
    assert download.source_urls(" https://c.example/x, https://b.example/x ") == [
        "https://c.example/x",
        "https://b.example/x",
        "https://a.example/x",
    ]
    monkeypatch.setenv(download.DOWNLOAD_URL_ENV, "https://d.example/x")
    assert download.source_urls()[0] == "https://d.example/x"
    assert download.source_urls("https://c.example/x")[:2] == ["https://c.example/x", "https://a.example/x"]


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_a_good_archive_from_a_mirror_is_accepted_and_loads(via, serve, official_md5_is, tmp_path, monkeypatch):
    mirror, data_dir = serve(), tmp_path / "data"
    if via == "environment":
        monkeypatch.setenv(download.DOWNLOAD_URL_ENV, f"{closed_port_url()},{mirror.url}")
    given = f"{closed_port_url()},{mirror.url}" if via == "argument" else None
    dm = CIFAR10DataModule(str(data_dir), batch_size=8, val_size=10, download_url=given)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_split[1]) == 30 and len(dm.val_split[1]) == 10
    assert len(mirror.log) == 1
    assert_unpacked(data_dir)


def test_data_already_there_is_not_downloaded(serve, archive, official_md5_is, tmp_path):
    mirror = serve()
    by_hand = tmp_path / "tarball"
    by_hand.mkdir()
    (by_hand / "cifar-10-python.tar.gz").write_bytes(archive)
    folder = write_image_folder(tmp_path / "folder", train_per_class=2, test_per_class=1)
    for data_dir in (by_hand, folder):
        dm = CIFAR10DataModule(str(data_dir), batch_size=8, val_size=2, download_url=mirror.url)
        dm.prepare_data()
        dm.setup("test")
    assert mirror.log == []
    assert sources.detect_source(by_hand) == "archive"


@pytest.mark.parametrize("given", ["http://[::1", "ftp://x", "http://", "http://host:port/x", "", " , "])
def test_a_malformed_download_url_is_one_line_naming_it(given, tmp_path):
    with pytest.raises(SettingError) as caught:
        CIFAR10DataModule(str(tmp_path / "data"), download_url=given)
    message = str(caught.value)
    assert "\n" not in message and caught.value.parameter == "download_url"
    if given.strip(" ,"):
        assert message.startswith(f"download_url '{given}' ") and "give http:// or https:// URLs" in message
    else:
        assert message.startswith("download_url is empty: give the URL of a copy of cifar-10-python.tar.gz")


def test_a_malformed_url_in_the_environment_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv(download.DOWNLOAD_URL_ENV, "https://ok.example/x,ftp://x")
    with pytest.raises(UserError, match=r"^\$LENET_LIGHTNING_DOWNLOAD_URL 'ftp://x' is not an http:// or https:// URL"):
        download.source_urls()


# --- the command line ---------------------------------------------------------------


def test_the_command_line_reports_each_failing_source_then_what_to_do(serve, official_md5_is, tmp_path, capsys):
    mirror, data_dir = serve("corrupt"), tmp_path / "data"
    argv = ["--data-dir", str(data_dir), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"]
    assert run([*argv, "--download-url", mirror.url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error = err[err.index("error: ") :].splitlines()
    assert error[0] == f"error: no CIFAR-10 data in '{data_dir}', and no source delivered cifar-10-python.tar.gz:"
    assert error[1].startswith(f"  {mirror.url}: sent a different file (md5 ")
    assert error[2].startswith("what to do: add a mirror with --download-url") and len(error) == 3
    assert_clean(data_dir)


def test_the_command_line_refuses_a_malformed_download_url_in_one_line(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path / "data"), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"]
    assert run([*argv, "--download-url", "http://[::1"]) == 2
    assert error_line(capsys) == (
        "error: --download-url 'http://[::1' is not a valid URL (Invalid IPv6 URL): give http:// or https:// URLs "
        "such as https://example.org/cifar-10-python.tar.gz, separated by commas"
    )
    assert not (tmp_path / "data").exists()


def test_train_downloads_from_the_given_mirror_then_trains_and_tests(serve, official_md5_is, tmp_path):
    torch.set_num_threads(1)
    mirror, data_dir = serve(), tmp_path / "data"
    argv = ["--data-dir", str(data_dir), "--download-url", mirror.url, "--log-dir", str(tmp_path / "logs")]
    argv += ["--accelerator", "cpu", "--max-epochs", "1", "--batch-size", "16", "--val-size", "10"]
    metrics = main([*argv, "--log-every-n-steps", "1"])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert len(mirror.log) == 1
    assert_unpacked(data_dir)
