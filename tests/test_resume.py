"""Exact resume: a run killed (kill -9) or crashed at any moment ends like an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lenet_lightning import experiment
from lenet_lightning.cli import main
from lenet_lightning.runs import AtomicCheckpointIO
from tests.conftest import write_cifar_archive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One intra-op thread here and in the subprocesses: LeNet on tiny batches gains nothing from
    more, and on a busy machine oversubscribed threads make every step many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def train_py(*flags: str | Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *map(str, flags)]


# --- 1. exact resume after kill -9 ----------------------------------------------------------

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


def test_kill_9_mid_epoch_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(cifar_archive, tmp_path):
    flags = ["--data-dir", cifar_archive, *RESUME_FLAGS]
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("whole", "killed")}  # noqa: SIM115
    whole = subprocess.Popen(
        train_py(*flags, "--log-dir", tmp_path / "whole"), stdout=logs["whole"], stderr=subprocess.STDOUT
    )
    killed = subprocess.Popen(
        train_py(*flags, "--log-dir", tmp_path / "killed"), stdout=logs["killed"], stderr=subprocess.STDOUT
    )
    last = tmp_path / "killed" / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        # Wait for a step checkpoint in the middle of the second epoch, early enough in the
        # epoch that the next save (5 steps later) is mid-epoch too, then kill -9.
        deadline, seen = time.monotonic() + 120, -1
        while killed.poll() is None and time.monotonic() < deadline:
            mtime = last.stat().st_mtime_ns if last.exists() else -1
            if mtime != seen:
                seen, step = mtime, saved_step(last)
                if step is not None and step > STEPS_PER_EPOCH and 0 < step % STEPS_PER_EPOCH <= 20:
                    break
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL, "training ended before it could be killed"
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] % STEPS_PER_EPOCH != 0, "not a mid-epoch checkpoint"
        assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["position"] > 0

        # No flags but the log folder: everything else comes from the checkpoint.
        resumed = subprocess.run(
            train_py("--ckpt-path", "last", "--log-dir", tmp_path / "killed"), capture_output=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-3000:]
        assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text(errors="replace")[-3000:]
    finally:
        for process in (whole, killed):
            if process.poll() is None:
                process.kill()
                process.wait()
        for file in logs.values():
            file.close()

    runs = {name: tmp_path / name / "lenet" / "version_0" for name in ("whole", "killed")}
    assert sorted(p.name for p in (tmp_path / "killed" / "lenet").iterdir()) == ["version_0"]
    # Identical files, not approximately equal numbers.
    assert (runs["killed"] / "test_metrics.json").read_text() == (runs["whole"] / "test_metrics.json").read_text()
    # The same best checkpoint was chosen, and training ended in exactly the same weights.
    checkpoints = {
        name: sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt")) for name, folder in runs.items()
    }
    assert checkpoints["killed"] == checkpoints["whole"]
    ends = {name: torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True) for name, folder in runs.items()}
    assert ends["killed"]["global_step"] == ends["whole"]["global_step"] == 3 * STEPS_PER_EPOCH
    for key, value in ends["whole"]["state_dict"].items():
        assert torch.equal(ends["killed"]["state_dict"][key], value), key


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
    """A step save on an epoch's last batch would come before validation: Lightning cannot resume from there."""
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
    assert torch.load(last, weights_only=True)["global_step"] == 5  # not 10: that save waits for validation
    resumed = main(["--ckpt-path", "last", "--log-dir", str(tmp_path / "crashed")])
    assert resumed == whole
    ends = [
        torch.load(p / "lenet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for p in (tmp_path / "whole", tmp_path / "crashed")
    ]
    assert ends[0]["global_step"] == ends[1]["global_step"] == 20
    for key, value in ends[0]["state_dict"].items():
        assert torch.equal(ends[1]["state_dict"][key], value), key
