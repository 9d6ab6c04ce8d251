"""CUDA: data on the GPU, every precision; and the GPU check script's parts that run anywhere."""

import math

import lightning as L
import pytest
import torch

from benchmarks import gpu_check
from lenet_lightning import CIFAR10DataModule, LeNetClassifier
from lenet_lightning.cli import main


@pytest.mark.gpu
def test_bf16_mixed_epoch_on_gpu_keeps_the_data_on_the_gpu(cifar_archive):
    datamodule = CIFAR10DataModule(str(cifar_archive), batch_size=16, val_size=100, seed=3)
    model = LeNetClassifier(lr=0.05)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1, logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert datamodule.train_split is not None and datamodule.train_split[0].device.type == "cuda"
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert math.isfinite(trainer.callback_metrics["test/acc"].item())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"])
def test_every_gpu_precision_trains_and_tests(precision, cifar_archive, tmp_path):
    flags = ["--accelerator", "gpu", "--devices", "1", "--max-epochs", "1", "--batch-size", "16", "--seed", "3"]
    metrics = main(["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), "--val-size", "100", *flags])
    assert metrics["test/acc"] > 0.3  # a floor: GPU kernels need not match CPU results bit for bit


def test_gpu_check_dry_run_lists_every_check_without_a_gpu(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "DDP", "batch 256", "batch 1024", "batch 4096"):
        assert name in out


def test_gpu_check_refuses_to_run_without_a_gpu_unless_asked_for_cpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_gpu_check_runs_its_checks_on_cpu_and_fails_on_a_missed_floor(cifar_archive, capsys):
    smoke = ["--device", "cpu", "--data-dir", str(cifar_archive), "--val-size", "100", "--precisions", "32-true"]
    smoke += ["--batch-sizes", "64"]
    assert gpu_check.main([*smoke, "--min-acc", "0.0"]) == 0
    out = capsys.readouterr().out
    assert "2/2 checks passed" in out and "data on cpu" in out and "fit/plain" in out
    assert gpu_check.main([*smoke, "--batch-sizes", "", "--min-acc", "1.0"]) == 1
