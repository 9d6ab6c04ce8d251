"""Small CIFAR-10-shaped data sets the tests make themselves: no network, no real data."""

from __future__ import annotations

import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet_lightning import CIFAR10_CLASSES, download


def synthetic_images(num_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class has its own colour pattern, plus noise.

    Returns ``uint8`` images ``(N, 3, 32, 32)`` and labels ``(N,)``, classes interleaved.
    """
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(10), num_per_class)
    base = np.random.default_rng(1234).integers(0, 256, size=(10, 3, 1, 1))
    stripes = (np.arange(32) // (1 + np.arange(10)[:, None])) % 2 * 60  # (10, 32) per-class stripes
    images = base[labels] + stripes[labels][:, None, None, :] + rng.normal(0, 10, size=(len(labels), 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def batch_pickle(images: np.ndarray, labels: list[int], name: str) -> bytes:
    """One batch as the official files hold it: ``data`` ``(N, 3072)`` uint8, ``labels``, ``batch_label``,
    ``filenames`` (bytes keys, as Python 3 reads the official Python 2 pickles with ``encoding='bytes'``)."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"{index:05d}.png".encode() for index in range(len(images))],
    }
    return pickle.dumps(batch, protocol=4)  # 5 would pickle arrays with another numpy function


def write_cifar_archive(root: Path, train_per_class: int = 60, test_per_class: int = 20) -> Path:
    """The official python layout: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = synthetic_images(train_per_class, seed=0)
    for index, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = batch_pickle(images[chunk], labels[chunk].tolist(), f"training batch {index} of 5")
        (folder / f"data_batch_{index}").write_bytes(batch)
    images, labels = synthetic_images(test_per_class, seed=1)
    (folder / "test_batch").write_bytes(batch_pickle(images, labels.tolist(), "testing batch 1 of 1"))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return root


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def write_image_folder(root: Path, train_per_class: int = 8, test_per_class: int = 3) -> Path:
    """``train/<class>/*.png`` and ``test/<class>/*.jpg`` with the synthetic images."""
    for split, per_class, suffix, seed in (("train", train_per_class, "png", 2), ("test", test_per_class, "jpg", 3)):
        images, labels = synthetic_images(per_class, seed)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index:04d}.{suffix}", quality=95)
    return root


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_archive(tmp_path_factory.mktemp("cifar"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test decodes image folders into its own cache, never the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LENET_LIGHTNING_CACHE", str(cache))
    torch.set_num_threads(2)
    return cache


@pytest.fixture(autouse=True)
def local_download_sources_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever reaches the internet: no built-in mirrors, no $LENET_LIGHTNING_DOWNLOAD_URL."""
    monkeypatch.setattr(download, "MIRRORS", ())
    monkeypatch.delenv(download.DOWNLOAD_URL_ENV, raising=False)


@pytest.fixture(scope="session")
def small_checkpoint(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of one cheap training run on the synthetic archive (export and predict tests)."""
    from lenet_lightning.cli import main

    log_dir = tmp_path_factory.mktemp("small-run")
    flags = ["--data-dir", str(cifar_archive), "--log-dir", str(log_dir), "--accelerator", "cpu", "--seed", "3"]
    main([*flags, "--max-epochs", "2", "--batch-size", "32", "--val-size", "100", "--log-every-n-steps", "5"])
    return next((log_dir / "lenet" / "version_0" / "checkpoints").glob("best-*.ckpt"))


ROOT = Path(__file__).resolve().parents[1]


def train_py(*flags: str | Path) -> list[str]:
    """The command line of a ``train.py`` subprocess."""
    return [sys.executable, str(ROOT / "train.py"), *map(str, flags)]


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One intra-op thread here and in the subprocesses: LeNet on tiny batches gains nothing from
    more, and on a busy machine oversubscribed threads make every step many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line (progress bars may come before it); it must be the only ``error:`` line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA GPU: without one they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def last_checkpoints(*run_dirs: Path) -> list[dict]:
    """The ``checkpoints/last.ckpt`` of each run folder, loaded (to compare where runs ended)."""
    return [torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True) for run_dir in run_dirs]
