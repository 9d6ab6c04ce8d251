"""Every precision Lightning accepts: it trains and tests on CPU, or it is refused in one line."""

import math

import pytest
import torch

from lenet_lightning.cli import main, run

# One epoch at batch 16 (31 steps) learns the synthetic classes well above chance (0.1) in every precision.
TINY = ["--accelerator", "cpu", "--max-epochs", "1", "--batch-size", "16", "--val-size", "100", "--seed", "3"]
WEIGHT_DTYPES = {
    "32-true": torch.float32,
    "64-true": torch.float64,
    "bf16-true": torch.bfloat16,
    "bf16-mixed": torch.float32,  # mixed precision keeps float32 weights and computes in bf16
}


@pytest.mark.parametrize("precision", list(WEIGHT_DTYPES))
def test_every_cpu_precision_trains_and_tests(precision, cifar_archive, tmp_path):
    metrics = main(["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), "--precision", precision, *TINY])
    accuracy = metrics["test/acc"]
    assert math.isfinite(accuracy) and accuracy > 0.3
    checkpoint = torch.load(tmp_path / "lenet" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    weights = {name: value for name, value in checkpoint["state_dict"].items() if name.startswith("net.")}
    assert {value.dtype for value in weights.values()} == {WEIGHT_DTYPES[precision]}


def test_half_precision_on_cpu_is_refused_before_training_naming_what_to_use(cifar_archive, tmp_path, capsys):
    code = run(["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), *TINY, "--precision", "16-mixed"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--precision 16-mixed needs a GPU; on CPU use --precision bf16-mixed" in err
    assert not (tmp_path / "lenet").exists()
