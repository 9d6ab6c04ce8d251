"""Everything a run reads is checked before training: official batches (safely unpickled) and both splits."""

from __future__ import annotations

import pathlib
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lenet_lightning import CIFAR10DataModule
from lenet_lightning import archive as official
from lenet_lightning.cli import run
from lenet_lightning.errors import UserError
from tests.conftest import batch_pickle, synthetic_images, write_image_folder


def python2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch byte for byte as Python 2's cPickle (protocol 2) wrote the official files.

    Python 3 cannot write this: its arrays pickle bytes, where Python 2 pickled ``str``.
    """

    def string(value: bytes) -> bytes:  # Python 2 str: SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(value)]) + value if len(value) < 256 else b"T" + struct.pack("<I", len(value)) + value

    def small_int(value: int) -> bytes:
        return b"K" + bytes([value])

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + small_int(0)
        + b"\x85"
        + string(b"b")
        + b"\x87R("  # _reconstruct(ndarray, (0,), 'b'), then its state:
        + small_int(1)
        + struct.pack("<BI", ord("J"), data.shape[0])  # shape (N, 3072)
        + struct.pack("<BI", ord("J"), data.shape[1])
        + b"\x86cnumpy\ndtype\n"
        + string(b"u1")
        + small_int(0)
        + small_int(1)
        + b"\x87R("
        + small_int(3)
        + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
        + small_int(0)
        + b"tb\x89"
        + string(data.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(small_int(label) for label in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


@pytest.fixture
def archive(cifar_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic archive that a test may spoil."""
    return Path(shutil.copytree(cifar_archive, tmp_path / "archive"))


def batches(archive: Path) -> Path:
    return archive / "cifar-10-batches-py"


def test_official_python2_batches_are_read(archive):
    images, labels = synthetic_images(20, seed=1)
    (batches(archive) / "test_batch").write_bytes(python2_batch_pickle(images.reshape(200, -1), labels.tolist()))
    read_images, read_labels = official.load_archive_split(batches(archive), train=False)
    assert torch.equal(read_images, torch.from_numpy(images)) and read_labels.tolist() == labels.tolist()


def test_batches_with_str_keys_are_read(archive):
    images, labels = synthetic_images(20, seed=1)
    batch = {"data": images.reshape(200, -1), "labels": labels.tolist()}
    (batches(archive) / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    assert torch.equal(official.load_archive_split(batches(archive), train=False)[0], torch.from_numpy(images))


def spoiled_batch(case: str) -> bytes:
    images, labels = synthetic_images(30, seed=1)  # 300 images
    flat, label_list = images.reshape(300, -1), labels.tolist()
    batch: dict[str, object] = {"data": flat, "labels": label_list}
    if case == "fewer labels than images":
        batch["labels"] = label_list[:275]
    elif case == "images as (N, 32, 32, 3)":
        batch["data"] = images.transpose(0, 2, 3, 1).copy()
    elif case in ("label 11", "label -1"):
        batch["labels"] = [*label_list[:-1], int(case.split()[1])]
    elif case == "float pixels":
        batch["data"] = flat / 255.0
    elif case == "no labels":
        del batch["labels"]
    elif case == "no images":
        batch = {"data": flat[:0], "labels": []}
    elif case == "ragged labels":
        batch["labels"] = [[label] * (index % 2 + 1) for index, label in enumerate(label_list)]
    elif case == "nested labels":
        batch["labels"] = [[label] for label in label_list]
    elif case == "truncated":
        return batch_pickle(images, label_list, "testing batch 1 of 1")[:5000]
    return pickle.dumps(batch, protocol=4)


INVALID_BATCHES = {
    "fewer labels than images": "holds 300 images but 275 labels",
    "images as (N, 32, 32, 3)": "'data' is shape (300, 32, 32, 3), expected an array of shape (N, 3072)",
    "label 11": "labels range from 0 to 11, expected 0..9",
    "label -1": "labels range from -1 to 9, expected 0..9",
    "float pixels": "'data' holds float64 values, expected 8-bit pixels",
    "no labels": "'labels' is not a list of class numbers",
    "no images": "it holds no images",
    "ragged labels": "'labels' is not a list of class numbers",
    "nested labels": "'labels' is not a list of class numbers",
    "truncated": "cannot read '",
}


@pytest.mark.parametrize("case", list(INVALID_BATCHES))
def test_an_invalid_batch_is_refused_naming_the_file_and_the_fix(case, archive):
    (batches(archive) / "test_batch").write_bytes(spoiled_batch(case))
    with pytest.raises(UserError) as refused:
        official.load_archive_split(batches(archive), train=False)
    message = str(refused.value)
    assert INVALID_BATCHES[case] in message and "test_batch" in message, message
    assert message.endswith("download again, or put the official archive's cifar-10-batches-py/ there")
    assert "\n" not in message


class Payload:
    """Unpickled unsafely, this creates ``marker``: a stand-in for any code a file could run (os.system...)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def malicious_batch(marker: Path) -> bytes:
    images, labels = synthetic_images(12, seed=0)
    return pickle.dumps({"data": images.reshape(120, -1), "labels": labels.tolist(), "x": Payload(marker)})


def test_the_malicious_batch_really_runs_code_when_unpickled_plainly(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(malicious_batch(marker))
    assert marker.exists()  # so the next test would notice if the payload ran


def test_a_batch_that_would_run_code_is_refused_before_anything_runs(archive, tmp_path):
    marker = tmp_path / "ran"
    (batches(archive) / "data_batch_2").write_bytes(malicious_batch(marker))
    with pytest.raises(UserError, match=r"refused to read '.*data_batch_2': .* could run code \(it asks for "):
        official.load_archive_split(batches(archive), train=True)
    assert not marker.exists()


def fit_setup(data_dir: Path) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(str(data_dir), batch_size=16, val_size=10)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_fit_setup_loads_the_test_split_too(archive):
    assert len(fit_setup(archive).test_split[1]) == 200  # loaded before training, not after


@pytest.mark.parametrize("spoil", ["missing", "corrupt", "no images"])
def test_a_broken_test_batch_stops_fit_setup(spoil, archive):
    test_batch = batches(archive) / "test_batch"
    if spoil == "missing":
        test_batch.unlink()
    elif spoil == "corrupt":
        test_batch.write_bytes(b"\x80\x04garbage")
    else:
        test_batch.write_bytes(spoiled_batch("no images"))
    with pytest.raises(UserError, match="test_batch"):
        fit_setup(archive)


def test_an_image_folder_without_test_folder_stops_fit_setup(tmp_path):
    folder = write_image_folder(tmp_path / "folder", train_per_class=3, test_per_class=1)
    shutil.rmtree(folder / "test")
    with pytest.raises(UserError, match=r"test' is missing: an image folder needs train/<class>/ and test/<class>/"):
        fit_setup(folder)


def test_val_size_0_is_refused_with_the_fix(archive):
    with pytest.raises(UserError, match=r"^val_size must be at least 1, got 0$"):
        CIFAR10DataModule(str(archive), val_size=0)


def test_a_training_class_without_images_gets_a_warning(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "folder", train_per_class=3, test_per_class=1)
    for image in (folder / "train" / "cat").iterdir():
        image.unlink()
    dm = fit_setup(folder)
    assert len(dm.train_split[1]) + len(dm.val_split[1]) == 27
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "include no cat:" in warnings[0], warnings


def test_a_complete_training_split_gets_no_warning(archive, capsys):
    fit_setup(archive)
    assert "warning" not in capsys.readouterr().err


def test_the_command_line_refuses_a_batch_that_would_run_code_before_training(archive, tmp_path, capsys):
    marker = tmp_path / "ran"
    (batches(archive) / "data_batch_2").write_bytes(malicious_batch(marker))
    logs = tmp_path / "logs"
    argv = ["--data-dir", str(archive), "--log-dir", str(logs), "--accelerator", "cpu", "--val-size", "10"]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refused to read '") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "delete '" in err and "download again" in err
    assert not marker.exists() and not list(logs.rglob("*.ckpt"))
