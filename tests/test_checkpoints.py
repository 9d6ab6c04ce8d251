"""Checkpoints never run code, prove their integrity, hold finite weights, and may come from any writer.

A checkpoint carrying pickled objects is refused before loading; one whose weights
differ from their saved digest, or are not finite, is refused with one line. Those of a
plain ``lightning.Trainer`` and of ``LightningCLI`` (no digest, no train.py settings) work.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from lenet_lightning import CIFAR10_CLASSES
from lenet_lightning.checkpoints import DIGEST_KEY, load_checkpoint, state_digest
from lenet_lightning.cli import run
from lenet_lightning.errors import UserError
from lenet_lightning.inference import classifier_from_checkpoint
from lenet_lightning.records import RUN_KEY
from tests.conftest import error_line, synthetic_images


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


@pytest.mark.parametrize("damage", ["missing weight", "wrong shape"])
def test_a_damaged_checkpoint_gets_one_line_naming_the_problem(damage, small_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    if damage == "missing weight":
        del checkpoint["state_dict"]["net.fc2.weight"]
    else:
        checkpoint["state_dict"]["net.fc3.weight"] = torch.zeros(5, 84)
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    assert run(["--evaluate", "--ckpt-path", str(tmp_path / "damaged.ckpt")]) == 2
    line = error_line(capsys)
    assert "does not match the model it describes" in line
    assert ("net.fc2.weight" if damage == "missing weight" else "net.fc3.weight has shape (5, 84)") in line


def saved_copy(checkpoint: dict, path: Path) -> str:
    torch.save(checkpoint, path)
    return str(path)


def test_checkpoints_written_by_training_carry_the_digest_of_their_weights(small_checkpoint):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    assert checkpoint[DIGEST_KEY] == state_digest(checkpoint["state_dict"])
    assert load_checkpoint(small_checkpoint)[DIGEST_KEY] == checkpoint[DIGEST_KEY]


def test_flipped_bytes_in_a_weight_are_refused_naming_the_file(small_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    raw = checkpoint["state_dict"]["net.conv2.weight"].view(-1).view(torch.uint8)  # the tensor's own storage
    raw[400:416] ^= 0xFF  # 16 bytes: the weights stay finite and of the right shape, only the digest differs
    damaged = saved_copy(checkpoint, tmp_path / "flipped.ckpt")
    with pytest.raises(UserError, match="failed its integrity check"):
        load_checkpoint(Path(damaged))
    line = predict_refusal(damaged, tmp_path, capsys)
    assert line.startswith(f"error: '{damaged}' failed its integrity check") and "damaged or was edited" in line


def predict_refusal(checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``--predict`` refuses ``checkpoint`` with (exit code 2), before reading any image."""
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    assert run(["--predict", str(image), "--ckpt-path", checkpoint]) == 2
    return error_line(capsys)


def test_a_checkpoint_without_a_digest_still_loads(small_checkpoint, tmp_path):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    del checkpoint[DIGEST_KEY]  # as written by a plain Trainer, LightningCLI or an earlier release
    assert DIGEST_KEY not in load_checkpoint(Path(saved_copy(checkpoint, tmp_path / "older.ckpt")))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor_and_the_file(value, small_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    checkpoint["state_dict"]["net.fc2.bias"][3] = value
    checkpoint[DIGEST_KEY] = state_digest(checkpoint["state_dict"])  # saved so by a run that diverged
    diverged = saved_copy(checkpoint, tmp_path / "diverged.ckpt")
    line = predict_refusal(diverged, tmp_path, capsys)
    assert line.startswith(f"error: '{diverged}' holds non-finite weights") and "in net.fc2.bias:" in line


def test_unknown_normalisation_is_refused_naming_the_file(small_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["normalization"] = "sepia"
    edited = saved_copy(checkpoint, tmp_path / "sepia.ckpt")
    line = predict_refusal(edited, tmp_path, capsys)
    assert line.startswith(f"error: '{edited}' holds unusable normalisation settings") and "'sepia'" in line


def test_weights_are_checked_against_lenet_without_building_the_training_system(small_checkpoint, tmp_path):
    """Only the class count of the hyper-parameters matters: unknown keys (another writer's) are no error."""
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"] = {"class_names": [f"c{i}" for i in range(10)], "_class_path": "x.Y", "new": 1}
    assert load_checkpoint(Path(saved_copy(checkpoint, tmp_path / "a.ckpt")))
    checkpoint["hyper_parameters"] = {"num_classes": 7}
    with pytest.raises(UserError, match=r"net.fc3.weight has shape \(10, 84\), expected \(7, 84\)"):
        load_checkpoint(Path(saved_copy(checkpoint, tmp_path / "b.ckpt")))


# --- checkpoints of other writers: a plain Trainer, LightningCLI ---------------------------------


@pytest.fixture(scope="module")
def foreign_checkpoints(cifar_archive, tmp_path_factory) -> dict[str, Path]:
    """The checkpoints that a plain ``lightning.Trainer`` and ``LightningCLI`` write themselves (2 steps each)."""
    import lightning as L

    from lenet_lightning import CIFAR10DataModule, LeNetClassifier

    # max_epochs as well as max_steps: LeNetClassifier sizes its learning-rate schedule from max_epochs,
    # which max_steps alone leaves at -1 (the schedule then has a negative length).
    found = {}
    folder = tmp_path_factory.mktemp("plain-trainer")
    trainer = L.Trainer(
        max_steps=2,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
    )
    trainer.fit(LeNetClassifier(), CIFAR10DataModule(data_dir=str(cifar_archive), val_size=100, batch_size=32))
    [found["plain Trainer"]] = folder.rglob("*.ckpt")
    if importlib.util.find_spec("jsonargparse") is not None:  # the cli extra
        from lenet_lightning.lightning_cli import main

        folder = tmp_path_factory.mktemp("lightning-cli")
        data = [f"--data.data_dir={cifar_archive}", "--data.val_size=100", "--data.batch_size=32"]
        steps = ["--trainer.max_steps=2", "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0"]
        quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        main(["fit", *data, *steps, *quiet, "--trainer.accelerator=cpu", f"--trainer.default_root_dir={folder}"])
        [found["LightningCLI"]] = folder.rglob("*.ckpt")
    return found


WRITERS = ["plain Trainer", "LightningCLI"]


def foreign_checkpoint(foreign_checkpoints: dict[str, Path], writer: str) -> Path:
    if writer not in foreign_checkpoints:
        pytest.skip("LightningCLI needs the cli extra (jsonargparse)")
    return foreign_checkpoints[writer]


@pytest.mark.parametrize("writer", WRITERS)
def test_checkpoints_of_other_writers_load(writer, foreign_checkpoints):
    checkpoint = load_checkpoint(foreign_checkpoint(foreign_checkpoints, writer))
    assert RUN_KEY not in checkpoint and DIGEST_KEY not in checkpoint
    model, class_names = classifier_from_checkpoint(checkpoint)
    assert class_names == CIFAR10_CLASSES
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)


@pytest.mark.parametrize("writer", WRITERS)
def test_checkpoints_of_other_writers_predict(writer, foreign_checkpoints, tmp_path, capsys):
    path = foreign_checkpoint(foreign_checkpoints, writer)
    image = tmp_path / "image.png"
    Image.fromarray(synthetic_images(1, seed=5)[0][3].transpose(1, 2, 0)).save(image)
    output = tmp_path / "results.json"
    assert run(["--predict", str(image), "--ckpt-path", str(path), "--output", str(output)]) == 0
    [result] = json.loads(output.read_text())
    assert result["class"] in CIFAR10_CLASSES and result["error"] is None


@pytest.mark.parametrize("writer", WRITERS)
def test_checkpoints_of_other_writers_export(writer, foreign_checkpoints, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = foreign_checkpoint(foreign_checkpoints, writer)
    assert run(["--export", str(tmp_path / "bundle"), "--ckpt-path", str(path)]) == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["model"]["classes"] == list(CIFAR10_CLASSES) and card["verification"]["images"] == 200
    assert card["training"]["recipe"]["optimizer"] == "sgd" and card["training"]["recipe"]["batch_size"] == 32
    assert card["test_metrics"]["accuracy"] is None  # no test_metrics.json beside these checkpoints
