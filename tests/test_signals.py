"""SIGTERM and SIGINT (Ctrl-C) in every phase: one line saying what was kept, exit 143 or 130, exact resume.

The signals are sent by the test process to itself, at the moment the phase under test
runs, through the same handlers a ``kill`` or a Ctrl-C reaches.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lenet_lightning import download, export, hardware, predict
from lenet_lightning.cli import main, run
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.extensions.checkpointing import LastCheckpoint
from lenet_lightning.leftovers import owner_tag
from lenet_lightning.module import LeNetClassifier
from tests.conftest import error_line, last_checkpoints, train_py, write_cifar_archive
from tests.test_download import archive, md5, official_md5_is, serve  # noqa: F401  (fixtures: a local mirror)

pytestmark = pytest.mark.usefixtures("one_thread")

# 300 training images - 50 for validation = 250, in batches of 25: 10 steps per epoch.
FLAGS = ["--accelerator", "cpu", "--batch-size", "25", "--val-size", "50", "--max-epochs", "2", "--seed", "4"]
FLAGS += ["--checkpoint-every-n-steps", "4", "--log-every-n-steps", "5"]
CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_archive(tmp_path_factory.mktemp("tiny"), train_per_class=30, test_per_class=5)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a run nobody stopped: what every stopped and resumed run must end as."""
    torch.set_num_threads(1)
    log_dir = tmp_path_factory.mktemp("whole")
    assert run(["--data-dir", str(tiny_data), *FLAGS, "--log-dir", str(log_dir)]) == 0
    return log_dir / "lenet" / "version_0"


def signal_when(
    monkeypatch: pytest.MonkeyPatch, signum: int, owner: type, method: str, when: Callable[..., bool]
) -> None:
    """Send ``signum`` to this process once, as ``owner.method`` starts with arguments for which ``when`` holds."""
    original = getattr(owner, method)
    sent: list[bool] = []

    def sending(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not sent and when(self, *args):
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, sending)


def in_training(step: int) -> Callable[..., bool]:
    return lambda module, batch, batch_idx: module.trainer.global_step == step


def in_first_validation(module: LeNetClassifier) -> bool:
    return not module.trainer.sanity_checking and module.trainer.current_epoch == 0


TRAINING_PHASES: dict[str, tuple[type, str, Callable[..., bool]]] = {
    "loading the data": (CIFAR10DataModule, "prepare_data", lambda dm: True),
    "the sanity check": (LeNetClassifier, "validation_step", lambda m, b, i: m.trainer.sanity_checking),
    "a training step": (LeNetClassifier, "training_step", in_training(13)),
    "an epoch's last step": (LeNetClassifier, "training_step", in_training(9)),
    "validation": (LeNetClassifier, "on_validation_start", in_first_validation),
    "an epoch's end": (LeNetClassifier, "on_train_epoch_end", lambda m: m.trainer.current_epoch == 0),
    "the test phase": (LeNetClassifier, "on_test_start", lambda m: True),
}
# (the step last.ckpt holds, how the line goes on after the signal's name); None: nothing was saved.
EXPECTED = {
    "loading the data": None,
    "the sanity check": None,
    "a training step": (14, "at step 14, last.ckpt saved at step 14; resume with: "),
    "an epoch's last step": (9, "at step 10, last.ckpt holds step 9 (step 10 is trained again on resume); "),
    "validation": (9, "at step 10 during epoch 0's validation, which is abandoned, last.ckpt holds step 9"),
    "an epoch's end": (10, "at step 10 at the end of epoch 0, last.ckpt saved at step 10; resume with: "),
    "the test phase": (20, "while testing, after training to step 20: nothing was written and the run stays "),
}
CASES = [
    ("loading the data", signal.SIGINT),
    ("the sanity check", signal.SIGTERM),
    ("a training step", signal.SIGINT),
    ("an epoch's last step", signal.SIGTERM),
    ("validation", signal.SIGTERM),
    ("validation", signal.SIGINT),
    ("an epoch's end", signal.SIGINT),
    ("the test phase", signal.SIGTERM),
]


def stop_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line, the only one saying that the run stopped; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert sum(line.startswith("stopped by") for line in lines) == 1, err[-3000:]
    return lines[-1]


@pytest.mark.parametrize(("phase", "signum"), CASES, ids=[f"{p}-{signal.Signals(s).name}" for p, s in CASES])
def test_a_stopped_run_says_which_step_it_kept_and_resumes_bit_for_bit(
    phase, signum, tiny_data, uninterrupted, tmp_path, monkeypatch, capsys
):
    signal_when(monkeypatch, signum, *TRAINING_PHASES[phase])
    assert run(["--data-dir", str(tiny_data), *FLAGS, "--log-dir", str(tmp_path)]) == CODES[signum]
    line = stop_line(capsys)
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT (Ctrl-C)"
    run_dir = tmp_path / "lenet" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    expected = EXPECTED[phase]
    if expected is None:
        # Nothing trained, nothing to resume: no run folder is left to confuse --ckpt-path last.
        assert line.startswith(f"stopped by {name} ") and "nothing was saved; start the run again" in line, line
        assert not (tmp_path / "lenet").exists()
        return
    held, words = expected
    assert line.startswith(f"stopped by {name} {words}"), line
    assert line.endswith(f" --ckpt-path {last}"), line
    assert torch.load(last, weights_only=True)["global_step"] == held
    assert not (run_dir / "test_metrics.json").exists()  # not finished: resumable

    monkeypatch.undo()
    assert run(["--ckpt-path", "last", "--log-dir", str(tmp_path)]) == 0
    # Identical files, not approximately equal numbers.
    assert (run_dir / "test_metrics.json").read_text() == (uninterrupted / "test_metrics.json").read_text()
    names = [sorted(p.name for p in (folder / "checkpoints").iterdir()) for folder in (run_dir, uninterrupted)]
    assert names[0] == names[1]
    ends = last_checkpoints(run_dir, uninterrupted)
    for key, value in ends[1]["state_dict"].items():
        assert torch.equal(ends[0]["state_dict"][key], value), key


def send_first(monkeypatch: pytest.MonkeyPatch, signum: int, owner: Any, name: str) -> None:
    """Send ``signum`` to this process as the function ``owner.name`` is first called."""
    original = getattr(owner, name)
    sent: list[bool] = []

    def sending(*args: Any, **kwargs: Any) -> Any:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, sending)


def test_an_evaluation_stopped_by_a_signal_writes_nothing(small_checkpoint, monkeypatch, capsys):
    run_dir = small_checkpoint.parent.parent
    before = sorted(p.name for p in run_dir.iterdir())
    signal_when(monkeypatch, signal.SIGTERM, LeNetClassifier, "on_test_start", lambda m: True)
    assert run(["--evaluate", "--ckpt-path", str(small_checkpoint)]) == 143
    line = stop_line(capsys)
    assert line == f"stopped by SIGTERM while evaluating '{small_checkpoint}': nothing was written"
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_predicting_stopped_by_ctrl_c_writes_nothing(small_checkpoint, image_folder, tmp_path, monkeypatch, capsys):
    output = tmp_path / "results.csv"
    send_first(monkeypatch, signal.SIGINT, predict, "classify")
    flags = ["--predict", str(image_folder), "--ckpt-path", str(small_checkpoint), "--output", str(output)]
    assert run(flags) == 130
    assert stop_line(capsys) == "stopped by SIGINT (Ctrl-C) while classifying files: nothing was written"
    assert not output.exists()


def test_an_export_stopped_by_a_signal_leaves_no_bundle_and_no_staging_folder(
    small_checkpoint, tmp_path, monkeypatch, capsys
):
    target = tmp_path / "bundle"
    send_first(monkeypatch, signal.SIGTERM, export, "export_onnx")
    assert run(["--export", str(target), "--ckpt-path", str(small_checkpoint)]) == 143
    assert stop_line(capsys) == f"stopped by SIGTERM while exporting to '{target}': nothing was written"
    assert list(tmp_path.iterdir()) == []


DDP_FLAGS = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--batch-size", "5", "--val-size", "50"]
DDP_FLAGS += ["--max-epochs", "2", "--seed", "4", "--log-every-n-steps", "5"]


def test_sigterm_to_ddp_rank_0_while_the_ranks_save_every_step_stops_both_ranks(tiny_data, tmp_path):
    """Lightning broadcast SIGTERM from inside its handler and deadlocked with the save's barrier."""
    flags = ["--data-dir", tiny_data, "--log-dir", tmp_path, *DDP_FLAGS, "--checkpoint-every-n-steps", "1"]
    err = (tmp_path / "err.log").open("wb")
    process = subprocess.Popen(train_py(*flags), stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    last = tmp_path / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the ranks are saving every step from now on
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()  # (and its rank 1 exits when rank 0 does)
            process.wait()
        err.close()
    output = (tmp_path / "err.log").read_text(errors="replace").replace("\r", "\n")
    assert code == 143, output[-3000:]
    line = output.strip().splitlines()[-1]
    step = torch.load(last, weights_only=True)["global_step"]
    assert line.startswith(f"stopped by SIGTERM at step {step}, last.ckpt saved at step {step}; resume with: "), line
    assert output.count("stopped by") == 1  # one line, from rank 0


def test_a_multi_node_run_says_where_it_waits_for_the_other_nodes_and_gives_up_in_time(tiny_data, tmp_path):
    flags = ["--data-dir", tiny_data, "--log-dir", tmp_path, "--accelerator", "cpu", "--devices", "1"]
    env = {**os.environ, hardware.NODE_TIMEOUT_ENV: "2", "MASTER_PORT": str(free_port())}
    started = time.monotonic()
    done = subprocess.run(train_py(*flags, "--num-nodes", "2"), capture_output=True, text=True, env=env, timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    port = env["MASTER_PORT"]
    assert lines[0].startswith(f"node 0 of 2: waiting for the other nodes to join at 127.0.0.1:{port} "), lines[0]
    assert "giving up after 2 s" in lines[0]
    assert lines[-1].startswith(f"error: the other nodes did not join at 127.0.0.1:{port} within 2 s"), lines[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "lenet").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from lenet_lightning.extensions.checkpointing import AtomicCheckpointIO

def half_written(obj, file):
    file.write(b"half a checkpoint")
    file.flush()
    print("writing", flush=True)
    time.sleep(60)

torch.save = half_written
AtomicCheckpointIO().save_checkpoint({}, Path(sys.argv[1]))
"""


def kill_a_writer_mid_save(target: Path) -> Path:
    """Start a process that writes ``target`` and ``kill -9`` it half-way; returns the temporary file it left."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    [left] = [p for p in target.parent.iterdir() if p.name.startswith(f".tmp-{owner_tag(writer.pid)}")]
    return left


def test_a_resumed_run_leaves_one_best_checkpoint_and_removes_temporary_files_of_killed_writers_only(
    tiny_data, uninterrupted, tmp_path, monkeypatch
):
    def crash(callback: LastCheckpoint, trainer: Any, module: Any) -> None:
        # After epoch 0's best checkpoint was written, before last.ckpt holds the epoch's end.
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(LastCheckpoint, "on_train_epoch_end", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["--data-dir", str(tiny_data), *FLAGS, "--log-dir", str(tmp_path)])
    monkeypatch.undo()
    folder = tmp_path / "lenet" / "version_0" / "checkpoints"
    dead = kill_a_writer_mid_save(folder / "last.ckpt")
    live = folder / f".tmp-{owner_tag()}00000000-last.ckpt"  # a writer still at work
    elsewhere = folder / f".tmp-0badcafe-{dead.name.split('-')[2]}-11111111-last.ckpt"  # one on another machine
    for path in (live, elsewhere):
        path.write_bytes(b"half a checkpoint")

    assert run(["--ckpt-path", "last", "--log-dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    # Epoch 0 was validated again: its best file was replaced, not copied to -v1.
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, live.name, elsewhere.name])
    assert (folder.parent / "test_metrics.json").read_text() == (uninterrupted / "test_metrics.json").read_text()


def test_a_resume_stopped_while_loading_the_data_says_its_checkpoint_is_untouched(
    tiny_data, tmp_path, monkeypatch, capsys
):
    signal_when(monkeypatch, signal.SIGTERM, *TRAINING_PHASES["a training step"])
    assert run(["--data-dir", str(tiny_data), *FLAGS, "--log-dir", str(tmp_path)]) == 143
    monkeypatch.undo()
    capsys.readouterr()
    signal_when(monkeypatch, signal.SIGINT, *TRAINING_PHASES["loading the data"])
    assert run(["--ckpt-path", "last", "--log-dir", str(tmp_path)]) == 130
    last = tmp_path / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    expected = "stopped by SIGINT (Ctrl-C) while loading the data, last.ckpt holds step 14; resume with: "
    assert stop_line(capsys).startswith(expected), expected
    assert torch.load(last, weights_only=True)["global_step"] == 14


def test_resuming_a_run_whose_folder_is_read_only_says_where_it_cannot_write(tiny_data, tmp_path, monkeypatch, capsys):
    signal_when(monkeypatch, signal.SIGTERM, *TRAINING_PHASES["a training step"])
    assert run(["--data-dir", str(tiny_data), *FLAGS, "--log-dir", str(tmp_path)]) == 143
    monkeypatch.undo()
    run_dir = tmp_path / "lenet" / "version_0"
    write_text = Path.write_text

    def read_only(path: Path, *args: Any, **kwargs: Any) -> int:
        if run_dir in path.absolute().parents:
            raise OSError(30, "Read-only file system", str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    capsys.readouterr()
    assert run(["--ckpt-path", "last", "--log-dir", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: cannot write to the run folder '{run_dir}' (Read-only file system): "), line
    assert "make it writable" in line and "copy the checkpoint" in line


@pytest.mark.usefixtures("official_md5_is")
def test_a_download_stopped_by_a_signal_keeps_its_partial_file_and_leaves_no_run_folder(
    request, tmp_path, monkeypatch, capsys
):
    mirror, data_dir = request.getfixturevalue("serve")(), tmp_path / "data"
    update = download.Progress.update

    def sigterm_midway(progress: download.Progress, count: int) -> None:
        update(progress, count)
        if progress.done >= len(mirror.archive) // 3:
            monkeypatch.setattr(download.Progress, "update", update)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(download.Progress, "update", sigterm_midway)
    argv = ["--data-dir", str(data_dir), "--download-url", mirror.url, "--log-dir", str(tmp_path / "logs"), *FLAGS]
    assert run(argv) == 143
    line = stop_line(capsys)
    assert line == (
        "stopped by SIGTERM while loading the data, before the first checkpoint: nothing was saved; "
        "start the run again with the same command"
    )
    assert 0 < (data_dir / ".cifar-10-python.tar.gz.part").stat().st_size < len(mirror.archive)
    assert not (tmp_path / "logs").exists()


RANK_0_SIGNALS_AS_TESTING_STARTS = """
import os, signal, sys
from lenet_lightning.cli import run
from lenet_lightning.module import LeNetClassifier

start = LeNetClassifier.on_test_start

def sigterm_on_rank_0(module):
    if module.trainer.global_rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    start(module)

LeNetClassifier.on_test_start = sigterm_on_rank_0
sys.exit(run(sys.argv[1:]))
"""


def test_sigterm_to_ddp_rank_0_as_its_test_phase_starts_stops_both_ranks(tiny_data, tmp_path):
    """Rank 1 is then between its setup hook and its first test hook, where Lightning's own handler is in place."""
    script = tmp_path / "rank_0_signals.py"  # Lightning starts rank 1 with this same script and flags
    script.write_text(RANK_0_SIGNALS_AS_TESTING_STARTS)
    flags = ["--data-dir", tiny_data, "--log-dir", tmp_path, *DDP_FLAGS, "--max-epochs", "1"]  # (the last one counts)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, script, *map(str, flags)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 143, done.stderr[-3000:]
    line = done.stderr.replace("\r", "\n").strip().splitlines()[-1]
    last = tmp_path / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    assert line.startswith("stopped by SIGTERM while testing, after training to step 25: nothing was written"), line
    assert line.endswith(f"--ckpt-path {last}"), line
    assert not (last.parent.parent / "test_metrics.json").exists()
