"""Issue 5, "Trust it": exact resume after kill -9, DDP on CPU, safe checkpoints, clear errors.

The download tests live in test_download.py.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lenet_lightning import CIFAR10DataModule, cli
from lenet_lightning.checkpoints import AtomicCheckpointIO
from lenet_lightning.cli import main, run
from lenet_lightning.errors import UserError
from tests.conftest import closed_port_url, write_cifar_archive, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One intra-op thread here and in the subprocesses: LeNet on tiny batches gains nothing from
    more, and on a busy machine oversubscribed threads make every step many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def train_py(*flags: str | Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *map(str, flags)]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line (progress bars may come before it); it must be the only ``error:`` line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())


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


def test_a_checkpoint_write_cut_short_by_kill_9_leaves_no_litter_once_saved_again(tmp_path):
    target = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.tmp999999"  # what kill -9 during a save leaves behind
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"global_step": 7}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True) == {"global_step": 7}


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

    build_trainer = cli.build_trainer
    monkeypatch.setattr(
        cli,
        "build_trainer",
        lambda *args, **kwargs: build_trainer(
            *args, **{**kwargs, "extra_callbacks": [*kwargs["extra_callbacks"], CrashInFirstValidation()]}
        ),
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*flags, "--log-dir", str(tmp_path / "crashed")])
    monkeypatch.setattr(cli, "build_trainer", build_trainer)
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


# --- 2. DDP on CPU ----------------------------------------------------------------------------


def test_every_rank_gets_the_same_val_split_and_evaluation_sees_each_image_once(cifar_archive):
    splits, seen = [], []
    for rank in range(2):
        dm = CIFAR10DataModule(str(cifar_archive), batch_size=16, val_size=99, seed=4)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)  # what the loaders read of a Trainer
        dm.setup("fit")
        splits.append(dm.val_split)
        seen += [image.numpy().tobytes() for images, _ in dm.val_dataloader() for image in images]
    assert torch.equal(splits[0][0], splits[1][0]) and torch.equal(splits[0][1], splits[1][1])
    # Every validation image exactly once over both ranks (99 is odd: no padding, no duplicate).
    assert sorted(seen) == sorted(image.numpy().tobytes() for image in splits[0][0])


def test_ddp_on_two_cpu_processes_tests_exactly_like_one_process(cifar_archive, tmp_path, capsys):
    logs = tmp_path / "logs"
    flags = ["--data-dir", cifar_archive, "--log-dir", logs, "--accelerator", "cpu", "--devices", "2"]
    flags += [
        "--strategy",
        "ddp",
        "--max-epochs",
        "1",
        "--batch-size",
        "8",
        "--val-size",
        "100",
        "--seed",
        "1",
        "--lr",
        "0.05",
    ]
    done = subprocess.run(train_py(*flags), capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "sync_dist" not in done.stderr  # per-class metrics are logged as the global values they are
    # Both ranks share the console: only rank 0 prints the table and names the run folder.
    assert done.stdout.count("overall") == 1 and done.stdout.count("run folder:") == 1
    assert [p.name for p in (logs / "lenet").iterdir()] == ["version_0"]
    run_dir = logs / "lenet" / "version_0"
    ddp_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert ddp_metrics["test/acc"] > 0.3  # learned something, so the comparison below means something

    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    (run_dir / "test_metrics.json").unlink()
    assert run(["--evaluate", "--ckpt-path", str(best)]) == 0
    assert json.loads((run_dir / "test_metrics.json").read_text()) == ddp_metrics
    assert "overall" in capsys.readouterr().out


# --- 3. checkpoints never run code --------------------------------------------------------------


class Payload:
    """Unpickled unsafely, this creates ``marker``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(2)}, "hyper_parameters": {}, "x": Payload(marker)}, path)
    return path


def test_the_malicious_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "ran"
    torch.load(malicious_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()  # so the next test would notice if the payload ran


@pytest.mark.parametrize("mode", ["evaluate", "predict", "resume"])
def test_a_checkpoint_with_code_in_it_is_refused_before_anything_runs(mode, cifar_archive, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = str(malicious_checkpoint(tmp_path / "evil.ckpt", marker))
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    argv = {
        "evaluate": ["--evaluate", "--ckpt-path", evil],
        "predict": ["--predict", str(image), "--ckpt-path", evil],
        "resume": ["--ckpt-path", evil, "--data-dir", str(cifar_archive), "--log-dir", str(tmp_path)],
    }[mode]
    assert run(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: refused to load '{evil}'") and "could run code" in line
    assert not marker.exists()


# --- 4. one clear line for every bad input ------------------------------------------------------


def make_bad_input(case: str, tmp: Path) -> list[str]:
    """Flags (beyond --data-dir/--log-dir/--accelerator) or a prepared mess for each bad-input case."""
    if case == "wrong class folders":
        folder = write_image_folder(tmp / "folder", train_per_class=1, test_per_class=1)
        (folder / "train" / "cat").rename(folder / "train" / "kitten")
        return ["--data-dir", str(folder)]
    if case == "unreadable image":
        folder = write_image_folder(tmp / "folder", train_per_class=1, test_per_class=1)
        (folder / "train" / "dog" / "broken.png").write_bytes(b"not a png")
        return ["--data-dir", str(folder)]
    if case == "not the official archive":
        (tmp / "hand").mkdir()
        (tmp / "hand" / "cifar-10-python.tar.gz").write_bytes(b"something else")
        return ["--data-dir", str(tmp / "hand")]
    if case == "checkpoint of another model":
        torch.save({"state_dict": {"fc.weight": torch.zeros(2)}, "hyper_parameters": {}}, tmp / "other.ckpt")
        return ["--evaluate", "--ckpt-path", str(tmp / "other.ckpt")]
    if case == "not a checkpoint":
        (tmp / "notes.ckpt").write_text("hello")
        return ["--evaluate", "--ckpt-path", str(tmp / "notes.ckpt")]
    if case in ("log folder not writable", "data folder not writable"):
        (tmp / "file").write_text("a regular file")  # chmod would not stop root: a file blocks the path instead
        flag = "--log-dir" if case.startswith("log") else "--data-dir"
        return [flag, str(tmp / "file" / "sub"), "--download-url", closed_port_url()]
    return {
        "data folder missing, offline": ["--data-dir", str(tmp / "nothing"), "--download-url", closed_port_url()],
        "--accelerator gpu without a GPU": ["--accelerator", "gpu"],
        "--devices 4 without GPUs": ["--accelerator", "auto", "--devices", "4"],
        "--devices 0": ["--devices", "0"],
        "--devices 0,1 on CPU": ["--devices", "0,1"],
        "--precision 16-mixed on CPU": ["--precision", "16-mixed"],
        "--batch-size 0": ["--batch-size", "0"],
        "--lr -0.1": ["--lr", "-0.1"],
        "--momentum 1": ["--momentum", "1"],
        "--max-epochs 0": ["--max-epochs", "0"],
        "--val-size -1": ["--val-size", "-1"],
        "--val-size too large": ["--val-size", "600"],
        "--num-workers -1": ["--num-workers", "-1"],
        "--seed -1": ["--seed", "-1"],
        "--checkpoint-every-n-steps -1": ["--checkpoint-every-n-steps", "-1"],
        "--log-every-n-steps 0": ["--log-every-n-steps", "0"],
        "--num-nodes 0": ["--num-nodes", "0"],
        "checkpoint does not exist": ["--evaluate", "--ckpt-path", str(tmp / "missing.ckpt")],
        "--ckpt-path last without runs": ["--ckpt-path", "last"],
        "--evaluate without checkpoint": ["--evaluate"],
        "--predict without checkpoint": ["--predict", "cat.png"],
    }[case]


BAD_INPUT = {
    "data folder missing, offline": "no CIFAR-10 data in",
    "wrong class folders": "rename them to the ten CIFAR-10 classes",
    "unreadable image": "cannot read image '",
    "not the official archive": "is not the official CIFAR-10 archive",
    "--accelerator gpu without a GPU": "PyTorch sees no CUDA GPU here",
    "--devices 4 without GPUs": "to train with 4 CPU processes (DDP) pass --accelerator cpu --devices 4",
    "--devices 0": "on CPU pass a number of processes",
    "--devices 0,1 on CPU": "on CPU pass a number of processes",
    "--precision 16-mixed on CPU": "needs a GPU",
    "--batch-size 0": "batch size must be at least 1",
    "--lr -0.1": "learning rate must be a positive number",
    "--momentum 1": "momentum must be in [0, 1)",
    "--max-epochs 0": "--max-epochs must be at least 1",
    "--val-size -1": "val size, translate and workers must be >= 0",
    "--val-size too large": "leaves no training images",
    "--num-workers -1": "val size, translate and workers must be >= 0",
    "--seed -1": "--seed must be between 0 and",
    "--checkpoint-every-n-steps -1": "--checkpoint-every-n-steps must be at least 0",
    "--log-every-n-steps 0": "--log-every-n-steps must be at least 1",
    "--num-nodes 0": "--num-nodes must be at least 1",
    "checkpoint does not exist": "does not exist",
    "checkpoint of another model": "is a checkpoint of another model",
    "not a checkpoint": "is not a readable checkpoint",
    "--ckpt-path last without runs": "no last.ckpt under",
    "--evaluate without checkpoint": "--evaluate needs --ckpt-path",
    "--predict without checkpoint": "--predict needs --ckpt-path",
    "log folder not writable": "cannot write to log folder",
    "data folder not writable": "cannot write to data folder",
}
NEEDS_NO_GPU = {"--accelerator gpu without a GPU", "--devices 4 without GPUs", "--precision 16-mixed on CPU"}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_one_line_naming_problem_and_fix_and_exit_code_2(case, cifar_archive, tmp_path, capsys):
    if case in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    hardware = [] if case in NEEDS_NO_GPU else ["--accelerator", "cpu"]
    argv = ["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path / "logs"), *hardware, "--max-epochs", "1"]
    argv = [*argv, *make_bad_input(case, tmp_path)]  # later flags win
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = 3 if case == "data folder missing, offline" else 1  # a line per download source, then what to do
    assert err.startswith("error: ") and err.count("\n") == lines, err
    assert BAD_INPUT[case] in err


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(UserError, match="--max-epochs must be at least 1"):
        run(["--max-epochs", "0", "--log-dir", str(tmp_path), "--debug"])


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    data = write_cifar_archive(tmp_path / "data", train_per_class=20, test_per_class=2)
    argv = ["--data-dir", str(data), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu", "--lr", "1e6"]
    argv += ["--batch-size", "16", "--val-size", "20", "--max-epochs", "2", "--checkpoint-every-n-steps", "1"]
    argv += ["--log-every-n-steps", "1"]
    assert run(argv) == 2
    line = error_line(capsys)
    stopped = re.match(
        r"error: the training loss became (nan|inf|-inf) at step (\d+) \(epoch 0\): training stopped", line
    )
    assert stopped, line
    assert line.endswith("train again with a lower --lr (this run: 1000000.0)")
    failed_step = int(stopped.group(2))
    last = torch.load(tmp_path / "logs" / "lenet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < last["global_step"] < failed_step  # saved before the loss went bad, not after
    assert finite(last["state_dict"])
