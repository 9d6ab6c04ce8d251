"""Small CIFAR-10-shaped data sets the tests make themselves: no network, no real data."""

from __future__ import annotations

import pickle
import socket
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


def write_cifar_archive(root: Path, train_per_class: int = 60, test_per_class: int = 20) -> Path:
    """The official python layout: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = synthetic_images(train_per_class, seed=0)
    for index, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {"data": images[chunk].reshape(len(chunk), -1), "labels": labels[chunk].tolist()}
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch))
    images, labels = synthetic_images(test_per_class, seed=1)
    test = {"data": images.reshape(len(labels), -1), "labels": labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA GPU: without one they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
