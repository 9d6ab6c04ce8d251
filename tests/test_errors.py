"""Bad input: one ``error:`` line naming the problem and the fix, exit code 2, nothing lost."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from lenet_lightning import evaluation
from lenet_lightning.cli import run
from lenet_lightning.errors import UserError
from tests.conftest import (
    batch_pickle,
    closed_port_url,
    error_line,
    synthetic_images,
    write_cifar_archive,
    write_image_folder,
)


def finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())


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
    if case == "broken link image":
        folder = write_image_folder(tmp / "folder", train_per_class=1, test_per_class=1)
        (folder / "train" / "dog" / "gone.png").symlink_to(tmp / "nowhere.png")
        return ["--data-dir", str(folder)]
    if case == "image folder without test/":
        folder = write_image_folder(tmp / "folder", train_per_class=1, test_per_class=1)
        shutil.rmtree(folder / "test")
        return ["--data-dir", str(folder), "--val-size", "5"]
    if case in ("corrupt test_batch", "labels out of range in a batch"):
        data = write_cifar_archive(tmp / "data", train_per_class=6, test_per_class=2)
        test_batch = data / "cifar-10-batches-py" / "test_batch"
        images, labels = synthetic_images(2, seed=1)
        spoiled = batch_pickle(images, [*labels.tolist()[:-1], 11], "test") if "labels" in case else b"\x80\x04junk"
        test_batch.write_bytes(spoiled)
        return ["--data-dir", str(data), "--val-size", "10"]
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
    if case == "--config with unknown settings":
        (tmp / "config.yaml").write_text("epochs: 3\n")
        return ["--config", str(tmp / "config.yaml")]
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
        "--eval-batch-size 0": ["--eval-batch-size", "0"],
        "--lr -0.1": ["--lr", "-0.1"],
        "--momentum 1": ["--momentum", "1"],
        "--max-epochs 0": ["--max-epochs", "0"],
        "--val-size -1": ["--val-size", "-1"],
        "--val-size 0": ["--val-size", "0"],
        "--val-size too large": ["--val-size", "600"],
        "--num-workers -1": ["--num-workers", "-1"],
        "--translate 40": ["--translate", "40"],
        "--precision transformer-engine": ["--precision", "transformer-engine"],
        "--precision 8-true": ["--precision", "8-true"],
        "--ckpt-path is a folder": ["--evaluate", "--ckpt-path", str(tmp)],
        "--config missing": ["--config", str(tmp / "missing.yaml")],
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
    "broken link image": "gone.png' (a link to a missing file): replace or delete the file",
    "image folder without test/": "test' is missing: an image folder needs train/<class>/ and test/<class>/",
    "corrupt test_batch": "test_batch' (UnpicklingError",
    "labels out of range in a batch": "test_batch' is not a valid CIFAR-10 batch: its labels range from 0 to 11",
    "not the official archive": "is not the official CIFAR-10 archive",
    "--accelerator gpu without a GPU": "PyTorch sees no CUDA GPU here",
    "--devices 4 without GPUs": "to train with 4 CPU processes (DDP) pass --accelerator cpu --devices 4",
    "--devices 0": "on CPU pass a number of processes",
    "--devices 0,1 on CPU": "on CPU pass a number of processes",
    "--precision 16-mixed on CPU": "needs a GPU",
    "--batch-size 0": "--batch-size must be at least 1",
    "--eval-batch-size 0": "--eval-batch-size must be at least 1",
    "--lr -0.1": "--lr must be above 0, got -0.1",
    "--momentum 1": "--momentum must be below 1, got 1.0",
    "--max-epochs 0": "--max-epochs must be at least 1",
    "--val-size -1": "--val-size must be at least 1, got -1",
    "--val-size 0": "--val-size must be at least 1, got 0",
    "--val-size too large": "leaves no training images",
    "--num-workers -1": "--num-workers must be at least 0, got -1",
    "--translate 40": "--translate must be at most 16, got 40",
    "--precision transformer-engine": "argument --precision: invalid choice: 'transformer-engine'",
    "--precision 8-true": "argument --precision: invalid choice: '8-true'",
    "--ckpt-path is a folder": "is a folder: pass a .ckpt file",
    "--config missing": "cannot read --config",
    "--config with unknown settings": "has unknown settings ['epochs']",
    "--seed -1": "--seed must be at least 0, got -1",
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
    bad = make_bad_input(case, tmp_path)
    training = ["--data-dir", str(cifar_archive), *hardware, "--max-epochs", "1"]
    if {"--evaluate", "--predict", "--export"} & set(bad):
        training = []  # the other modes refuse training flags, each in a line of its own (tested elsewhere)
    argv = ["--log-dir", str(tmp_path / "logs"), *training, *bad]  # later flags win
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = 3 if case == "data folder missing, offline" else 1  # a line per download source, then what to do
    assert err.startswith("error: ") and err.count("\n") == lines, err
    assert BAD_INPUT[case] in err
    assert not list((tmp_path / "logs").rglob("*.ckpt")), "refused before training"
    if case not in ("log folder not writable", "--ckpt-path last without runs"):  # they made logs/ themselves
        assert not (tmp_path / "logs").exists(), "no run folder and no empty parent is left"


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
        r"error: the training loss became NaN or infinite by step (\d+) \(epoch 0\): training stopped", line
    )
    assert stopped, line
    assert line.endswith("train again with a lower --lr (this run: 1000000.0)")
    failed_step = int(stopped.group(1))
    last = torch.load(tmp_path / "logs" / "lenet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < last["global_step"] < failed_step  # saved before the loss went bad, not after
    assert finite(last["state_dict"])


def test_evaluate_shows_its_table_even_when_the_run_folder_is_read_only(small_checkpoint, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(evaluation, "write_json", read_only)
    assert run(["--evaluate", "--ckpt-path", str(small_checkpoint)]) == 2
    captured = capsys.readouterr()
    assert "overall" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error: cannot write the results to")
    assert "Read-only file system" in captured.err


def test_a_log_folder_name_too_long_for_the_file_system_gets_one_line(cifar_archive, tmp_path, capsys):
    assert run(["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), "--name", "x" * 300]) == 2
    assert "File name too long" in error_line(capsys)
