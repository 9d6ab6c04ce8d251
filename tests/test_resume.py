"""Exact resume: a run killed (kill -9) or crashed at any moment ends like an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lenet_lightning import experiment
from lenet_lightning.cli import main, run
from lenet_lightning.extensions.checkpointing import AtomicCheckpointIO
from tests.conftest import last_checkpoints, train_py, write_cifar_archive
from tests.test_train import has_hparams, read_events

pytestmark = pytest.mark.usefixtures("one_thread")


# 600 training images - 100 for validation = 500, in batches of 16: 32 steps per epoch.
RESUME_FLAGS = [
    *("--accelerator", "cpu", "--batch-size", "16", "--val-size", "100", "--max-epochs", "3", "--seed", "5"),
    *("--checkpoint-every-n-steps", "5", "--log-every-n-steps", "5"),
]
STEPS_PER_EPOCH = 32


def saved_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


@pytest.fixture(scope="module")
def uninterrupted(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one whole ``train.py`` process: what every interrupted run must end as."""
    log_dir = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # as in every other process here: the same thread count, the same sums
        done = subprocess.run(
            train_py("--data-dir", cifar_archive, *RESUME_FLAGS, "--log-dir", log_dir), capture_output=True, timeout=300
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return log_dir / "lenet" / "version_0"


def interrupt_mid_epoch(process: subprocess.Popen[bytes], last: Path, signum: int) -> int:
    """Wait for a step checkpoint early in the second epoch, send ``signum``; return that step."""
    deadline, seen, step = time.monotonic() + 120, -1, None
    while process.poll() is None and time.monotonic() < deadline:
        mtime = last.stat().st_mtime_ns if last.exists() else -1
        if mtime != seen:
            seen, step = mtime, saved_step(last)
            # Early enough in the epoch that the next save (5 steps later) is mid-epoch too.
            if step is not None and step > STEPS_PER_EPOCH and 0 < step % STEPS_PER_EPOCH <= 20:
                break
        time.sleep(0.01)
    process.send_signal(signum)
    assert step is not None
    return step


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_interrupted_mid_epoch_then_resumed_ends_bit_for_bit_like_an_uninterrupted_run(
    signum, uninterrupted, cifar_archive, tmp_path
):
    out, err = (tmp_path / "out.log").open("wb"), (tmp_path / "err.log").open("wb")
    process = subprocess.Popen(
        train_py("--data-dir", cifar_archive, *RESUME_FLAGS, "--log-dir", tmp_path), stdout=out, stderr=err
    )
    last = tmp_path / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        step = interrupt_mid_epoch(process, last, signum)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()
    output = (tmp_path / "err.log").read_text(errors="replace")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL, "training ended before it could be killed"
        assert checkpoint["global_step"] % STEPS_PER_EPOCH != 0, "not a mid-epoch checkpoint"
    else:
        # A preempted run is no success: it says how to resume, and last.ckpt holds the step it stopped at.
        assert code == 143, output[-3000:]
        stopped = output.replace("\r", "\n").strip().splitlines()[-1]
        assert stopped.startswith("stopped by SIGTERM at step") and f"--ckpt-path {last}" in stopped, stopped
        assert checkpoint["global_step"] >= step
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["position"] > 0

    # No flags but the log folder: everything else comes from the checkpoint.
    resumed = subprocess.run(train_py("--ckpt-path", "last", "--log-dir", tmp_path), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-3000:]
    run_dir = tmp_path / "lenet" / "version_0"
    assert sorted(p.name for p in (tmp_path / "lenet").iterdir()) == ["version_0"]
    # Identical files, not approximately equal numbers.
    assert (run_dir / "test_metrics.json").read_text() == (uninterrupted / "test_metrics.json").read_text()
    assert_same_checkpoints(run_dir, uninterrupted)


def assert_same_checkpoints(run_dir: Path, reference: Path) -> None:
    """The same best checkpoint was chosen, and training ended in exactly the same weights."""
    names = [sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt")) for folder in (run_dir, reference)]
    assert names[0] == names[1]
    ends = last_checkpoints(run_dir, reference)
    assert ends[0]["global_step"] == ends[1]["global_step"]
    for key, value in ends[1]["state_dict"].items():
        assert torch.equal(ends[0]["state_dict"][key], value), key


def test_hparams_reach_the_event_file_when_the_process_exits(uninterrupted):
    """The HParams entry is flushed by the run itself, not by whatever happens at interpreter exit."""
    hparams = [a for a in read_events(uninterrupted) if has_hparams(a)]
    assert hparams, "no hparams entry in the event files"
    content = hparams[-1].PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content and "_hparams_/experiment" in content


class CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_run_with_a_relative_log_dir_resumes_exactly_after_its_folder_moved(cifar_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--data-dir", str(cifar_archive), "--accelerator", "cpu", "--batch-size", "32", "--val-size", "100"]
    flags += ["--max-epochs", "3", "--seed", "2", "--lr", "0.2"]
    whole = main([*flags, "--log-dir", "whole"])
    build_trainer = experiment.build_trainer

    def crashing_trainer(settings, logger, run_dir, fast_dev_run, extra_callbacks):
        return build_trainer(settings, logger, run_dir, fast_dev_run, [*extra_callbacks, CrashAtEpoch(2)])

    monkeypatch.setattr(experiment, "build_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*flags, "--log-dir", "runs"])
    monkeypatch.setattr(experiment, "build_trainer", build_trainer)
    Path("runs").rename("moved")
    last = Path("moved/lenet/version_0/checkpoints/last.ckpt")
    # The recipe cannot change on resume (the schedule was built for 3 epochs); where it logs can.
    assert run(["--ckpt-path", str(last), "--max-epochs", "5"]) == 2
    with warnings.catch_warnings():
        # Lightning forgets the best checkpoint's score when it thinks the folder changed, and says so.
        warnings.filterwarnings("error", message=".*dirpath has changed.*")
        resumed = main(["--ckpt-path", str(last), "--log-every-n-steps", "7"])
    assert resumed == whole
    assert_same_checkpoints(Path("moved/lenet/version_0"), Path("whole/lenet/version_0"))


def test_a_checkpoint_write_leaves_only_the_checkpoint_and_never_touches_other_writers_files(tmp_path):
    target = tmp_path / "last.ckpt"
    other = tmp_path / ".last.ckpt.0123456789abcdef.tmp"  # another process's write in progress
    other.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"global_step": 7}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "last.ckpt"]
    assert torch.load(target, weights_only=True) == {"global_step": 7}


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True) == {"global_step": 1}


class CrashInFirstValidation(Callback):
    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == 0:
            raise RuntimeError("simulated crash")


def test_crash_between_an_epochs_last_step_and_its_validation_resumes_exactly(tmp_path, monkeypatch):
    """A save after an epoch's last batch would come before validation: Lightning cannot resume from there."""
    data = write_cifar_archive(tmp_path / "data", train_per_class=30, test_per_class=5)
    # 300 - 50 = 250 images in batches of 25: 10 steps per epoch, a step save due at steps 5 and 10.
    flags = ["--data-dir", str(data), "--accelerator", "cpu", "--batch-size", "25", "--val-size", "50"]
    flags += ["--max-epochs", "2", "--checkpoint-every-n-steps", "5", "--log-every-n-steps", "5"]
    whole = main([*flags, "--log-dir", str(tmp_path / "whole")])

    build_trainer = experiment.build_trainer

    def crashing_trainer(settings, logger, run_dir, fast_dev_run, extra_callbacks):
        return build_trainer(settings, logger, run_dir, fast_dev_run, [*extra_callbacks, CrashInFirstValidation()])

    monkeypatch.setattr(experiment, "build_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*flags, "--log-dir", str(tmp_path / "crashed")])
    monkeypatch.setattr(experiment, "build_trainer", build_trainer)
    last = tmp_path / "crashed" / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    # Saved before the epoch's last step (9), not after it (10): Lightning resumes exactly only from there.
    assert torch.load(last, weights_only=True)["global_step"] == 9
    resumed = main(["--ckpt-path", "last", "--log-dir", str(tmp_path / "crashed")])
    assert resumed == whole
    ends = last_checkpoints(*(tmp_path / name / "lenet" / "version_0" for name in ("whole", "crashed")))
    assert ends[0]["global_step"] == ends[1]["global_step"] == 20
    for key, value in ends[0]["state_dict"].items():
        assert torch.equal(ends[1]["state_dict"][key], value), key
