"""Checkpoints never run code: a checkpoint carrying pickled objects is refused before loading."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lenet_lightning.cli import run
from tests.conftest import error_line


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
