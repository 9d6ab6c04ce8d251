"""DDP on CPU processes: the same split on every rank, test metrics equal to one process's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lenet_lightning import CIFAR10DataModule
from lenet_lightning.batches import BatchTransform
from lenet_lightning.cli import run
from tests.conftest import train_py

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_rank_gets_the_same_val_split_and_evaluation_sees_each_image_once(cifar_archive):
    splits, seen = [], []
    for rank in range(2):
        dm = CIFAR10DataModule(str(cifar_archive), batch_size=16, val_size=99, seed=4)
        # What the DataModule reads of a Trainer: rank, world size, device.
        dm.trainer = SimpleNamespace(
            global_rank=rank, world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        dm.setup("fit")
        splits.append(dm.val_split)
        seen += [image.numpy().tobytes() for images, _ in dm.val_dataloader() for image in images]
    assert torch.equal(splits[0][0], splits[1][0]) and torch.equal(splits[0][1], splits[1][1])
    # Every validation image exactly once over both ranks (99 is odd: no padding, no duplicate).
    expected = BatchTransform(dm.mean, dm.std)(splits[0][0], seed=None)  # as the loaders hand them out
    assert sorted(seen) == sorted(image.numpy().tobytes() for image in expected)


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
    assert run(["--evaluate", "--ckpt-path", str(best)]) == 0
    [evaluated] = run_dir.glob(f"eval_{best.stem}_{Path(cifar_archive).name}_*_metrics.json")
    assert json.loads(evaluated.read_text()) == ddp_metrics
    assert "overall" in capsys.readouterr().out
