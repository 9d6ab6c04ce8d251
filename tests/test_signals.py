"""SIGTERM and SIGINT (Ctrl-C) in every phase: one line saying what was kept, exit 143 or 130, exact resume.

The signals are sent by the test process to itself, at the moment the phase under test
runs, through the same handlers a ``kill`` or a Ctrl-C reaches.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lenet_lightning.cli import run
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.module import LeNetClassifier
from tests.conftest import last_checkpoints, write_cifar_archive

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
