import errno
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import torch
from PIL import Image

from lenet_lightning import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule, decode_cache, image_folders
from lenet_lightning import archive as official
from lenet_lightning.batches import BatchTransform, EpochShardSampler, TensorBatchLoader, augment
from lenet_lightning.errors import UserError
from tests.conftest import synthetic_images, write_image_folder


def make_dm(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    options = {"batch_size": 32, "val_size": 100, "seed": 7} | kwargs
    dm = CIFAR10DataModule(str(data_dir), **options)
    dm.prepare_data()
    return dm


# --- official archive ------------------------------------------------------------


def test_archive_split_sizes_and_dtypes(cifar_archive):
    dm = make_dm(cifar_archive)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_split[1]) == 500 and len(dm.val_split[1]) == 100 and len(dm.test_split[1]) == 200
    assert dm.train_split[0].dtype == torch.uint8 and dm.train_split[0].shape[1:] == (3, 32, 32)
    assert dm.classes == CIFAR10_CLASSES and dm.num_classes == 10 and dm.dims == (3, 32, 32)


def test_archive_images_and_labels_are_the_pickled_ones(cifar_archive):
    images, labels = official.load_archive_split(cifar_archive / "cifar-10-batches-py", train=False)
    expected_images, expected_labels = synthetic_images(20, seed=1)
    assert torch.equal(images, torch.from_numpy(expected_images))
    assert labels.tolist() == expected_labels.tolist()


def test_split_is_deterministic_and_disjoint(cifar_archive):
    first, second, other = make_dm(cifar_archive), make_dm(cifar_archive), make_dm(cifar_archive, seed=8)
    for dm in (first, second, other):
        dm.setup("fit")
    assert torch.equal(first.val_split[0], second.val_split[0])
    assert not torch.equal(first.val_split[0], other.val_split[0])
    train = {tuple(image.flatten()[:64].tolist()) for image in first.train_split[0]}
    val = {tuple(image.flatten()[:64].tolist()) for image in first.val_split[0]}
    assert not train & val


def test_val_size_too_large_is_a_clear_error(cifar_archive):
    dm = make_dm(cifar_archive, val_size=600)
    with pytest.raises(UserError, match="leaves no training images"):
        dm.setup("fit")


def test_missing_data_without_download_names_the_fix(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nothing"), download=False)
    dm.prepare_data()
    with pytest.raises(UserError, match=r"no CIFAR-10 data in .*--download-url.*image folder"):
        dm.setup("fit")


# --- image folder ----------------------------------------------------------------


def test_image_folder_labels_match_class_folders(image_folder):
    dm = make_dm(image_folder, val_size=10)
    dm.setup("test")
    images, labels = dm.test_split
    assert len(labels) == 30
    for label, name in enumerate(CIFAR10_CLASSES):
        files = sorted((image_folder / "test" / name).iterdir())
        assert (labels == label).sum() == len(files)
    first_bird = sorted((image_folder / "test" / "bird").iterdir())[0]
    expected = torch.from_numpy(np.array(Image.open(first_bird).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(images[labels == 2][0], expected)


def test_image_folder_with_wrong_class_folders_is_refused(image_folder):
    (image_folder / "train" / "cat").rename(image_folder / "train" / "kitten")
    with pytest.raises(UserError, match=r"class folders in .* rename them to the ten CIFAR-10 classes"):
        make_dm(image_folder)


def test_unreadable_image_is_named(image_folder):
    broken = image_folder / "train" / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"broken\.png"):
        make_dm(image_folder)


def within_seconds(seconds: float, fifo: Path, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, failing (rather than hanging for ever) when it waits on ``fifo`` for ``seconds``."""
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(function, *args)
        try:
            return loading.result(timeout=seconds)
        except FuturesTimeout:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer's close ends the blocked open
            raise AssertionError("loading blocked on a special file") from None


def test_special_files_named_like_images_are_skipped_with_one_notice(image_folder, isolated_cache, monkeypatch, capsys):
    cat = image_folder / "train" / "cat"
    os.mkfifo(cat / "fifo.png")
    monkeypatch.chdir(cat)  # a socket's path is limited to about 100 bytes: bind it by its short relative name
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("socket.jpg")
        load = image_folders.load_folder_split
        images, labels = within_seconds(10, cat / "fifo.png", load, image_folder / "train", isolated_cache)
    assert images.shape == (80, 3, 32, 32) and len(labels) == 80
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"skipping 2 special files named like images in '{image_folder / 'train'}' (FIFOs,")
    assert line.endswith("replace them with image files or delete them")


def test_reading_a_fifo_as_an_image_is_refused_not_waited_for(tmp_path):
    os.mkfifo(tmp_path / "photo.png")
    with pytest.raises(UserError, match=r"cannot read image '.*photo\.png' \(not a regular file: a FIFO, device"):
        within_seconds(10, tmp_path / "photo.png", image_folders.read_image, tmp_path / "photo.png")


def test_hidden_entries_are_skipped_with_one_notice_for_folders(image_folder, isolated_cache, capsys):
    train = image_folder / "train"
    for hidden_folder in (train / ".ipynb_checkpoints", train / "dog" / ".ipynb_checkpoints"):
        hidden_folder.mkdir()
        (hidden_folder / "0000-checkpoint.png").write_bytes(b"not an image")
    for hidden_file in (train / ".DS_Store", train / "cat" / ".DS_Store", train / "cat" / "._0000.png"):
        hidden_file.write_bytes(b"\x00\x05\x16\x07 Mac OS X metadata")
    images, labels = image_folders.load_folder_split(train, isolated_cache)
    assert images.shape == (80, 3, 32, 32) and torch.bincount(labels).tolist() == [8] * 10
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"skipping hidden folders in '{train}' (not classes, not images): .ipynb_checkpoints, dog/.ipynb_checkpoints"
    ]


def test_a_sideways_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    upright = np.zeros((32, 32, 3), dtype=np.uint8)
    upright[:8, :, 0] = 255  # a red band along the top: sideways, it runs down one side
    upright[8:, :16, 2] = 255
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=100, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the camera stored it turned the other way
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "sideways.jpg", quality=100, subsampling=0, exif=exif)
    read_upright = image_folders.read_image(tmp_path / "upright.jpg").int()
    read_sideways = image_folders.read_image(tmp_path / "sideways.jpg").int()
    assert (read_sideways - read_upright).abs().max() <= 3  # the same image, but for JPEG rounding
    raw = torch.from_numpy(np.array(Image.open(tmp_path / "sideways.jpg").convert("RGB"))).permute(2, 0, 1).int()
    assert (raw - read_upright).abs().max() > 200  # as stored, it is another picture


def test_images_of_other_sizes_are_resized(image_folder):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(image_folder / "test" / "cat" / "big.png")
    dm = make_dm(image_folder)
    dm.setup("test")
    assert dm.test_split[0].shape == (31, 3, 32, 32)
    assert (dm.test_split[0] == torch.tensor([255, 0, 0]).view(3, 1, 1)).all(dim=(1, 2, 3)).sum() == 1


def test_decode_cache_is_reused_and_invalidated(image_folder, isolated_cache, monkeypatch):
    make_dm(image_folder, val_size=10).setup("fit")
    cached = sorted(isolated_cache.glob("*.pt"))
    assert len(cached) == 2  # train and test, decoded in prepare_data
    assert not list(image_folder.rglob("*.pt")), "the cache must not be written into the data folder"

    def no_decoding(files):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(image_folders, "decode_files", no_decoding)
    make_dm(image_folder, val_size=10).setup("fit")  # served from the cache

    changed = image_folder / "train" / "cat" / "0003.png"
    Image.new("RGB", (32, 32), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        make_dm(image_folder)


# --- loaders -----------------------------------------------------------------------


def test_eval_shards_cover_every_sample_exactly_once():
    seen = []
    for rank in range(3):
        sampler = EpochShardSampler(101, 8, shuffle=False, rank=rank, world_size=3)
        batches = [indices for _, indices in sampler]
        assert len(batches) == len(sampler)
        seen += torch.cat(batches).tolist()
    assert sorted(seen) == list(range(101))


def test_train_shards_are_equal_disjoint_and_change_per_epoch():
    samplers = [EpochShardSampler(101, 8, shuffle=True, seed=3, rank=r, world_size=2) for r in range(2)]
    shards = [s.shard() for s in samplers]
    assert len(shards[0]) == len(shards[1]) == 50 and len(samplers[0]) == len(samplers[1]) == 7
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    samplers[0].set_epoch(1)
    assert not torch.equal(samplers[0].shard(), shards[0])


AUGMENTED = BatchTransform((0.5,) * 3, (0.25,) * 3, hflip=True, translate=2)


def loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, **kwargs) -> TensorBatchLoader:
    sampler = EpochShardSampler(len(labels), batch_size, shuffle=True, seed=1)
    return TensorBatchLoader(images, labels, sampler, AUGMENTED, **kwargs)


def test_loader_resumes_mid_epoch_exactly_with_the_same_augmentation():
    images, labels = torch.randint(0, 255, (50, 3, 32, 32), dtype=torch.uint8), torch.arange(50)
    full_loader = loader(images, labels, 8)
    full_loader.sampler.set_epoch(2)
    full = list(full_loader)
    partial = loader(images, labels, 8)
    partial.sampler.set_epoch(2)
    iterator = iter(partial)
    for _ in range(3):
        next(iterator)
    resumed = loader(images, labels, 8)
    resumed.load_state_dict(partial.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for (a_img, a_lab), (b_img, b_lab) in zip(full[3:], rest, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)


def test_worker_loader_yields_the_same_batches():
    images, labels = torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40)
    main = list(loader(images, labels, 16))
    workers = list(loader(images, labels, 16, num_workers=1))
    for a, b in zip(main, workers, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- batch transforms ----------------------------------------------------------------


def test_batches_are_normalised_with_the_chosen_statistics(cifar_archive):
    white = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    for options, expected in [
        ({}, [(1.0 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)]),
        ({"normalization": "half"}, [1.0] * 3),
        ({"normalization": "none"}, [1.0] * 3),
        ({"mean": (0.5, 0.25, 0.0), "std": (0.5, 0.25, 2.0)}, [1.0, 3.0, 0.5]),
    ]:
        dm = CIFAR10DataModule(str(cifar_archive), **options)
        out = BatchTransform(dm.mean, dm.std)(white, seed=None)
        assert out.dtype == torch.float32
        for channel in range(3):
            assert out[:, channel].allclose(torch.tensor(expected[channel])), options


def test_every_loader_yields_float_images_and_int64_labels(cifar_archive):
    dm = make_dm(cifar_archive, eval_batch_size=48)
    dm.setup("fit")
    dm.setup("test")
    for name in ("train", "val", "test", "predict"):
        loader = getattr(dm, f"{name}_dataloader")()
        size = 32 if name == "train" else 48  # evaluation has its own batch size
        batch = next(iter(loader))
        # Exactly two tensors in every stage but predict, whose batches are the images alone.
        images, labels = (batch, None) if name == "predict" else batch
        assert images.dtype == torch.float32 and images.shape == (size, 3, 32, 32), name
        assert labels is None or (labels.dtype == torch.int64 and labels.shape == (size,)), name
        assert loader.batch_size == size and len(loader) > 0


def test_evaluation_batches_hold_the_same_images_whatever_their_size(cifar_archive):
    def evaluation_data(eval_batch_size: int) -> list[torch.Tensor]:
        dm = make_dm(cifar_archive, eval_batch_size=eval_batch_size)
        dm.setup("fit")
        dm.setup("test")
        concatenated = []
        for loader in (dm.val_dataloader(), dm.test_dataloader()):
            batches = list(loader)
            concatenated += [torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])]
        return concatenated

    one_batch, batches_of_7 = evaluation_data(1000), evaluation_data(7)
    assert all(torch.equal(a, b) for a, b in zip(one_batch, batches_of_7, strict=True))


def test_training_augmentation_is_seeded_by_seed_epoch_and_batch(cifar_archive):
    first = [images for images, _ in make_dm_loaded(cifar_archive).train_dataloader()]
    again = [images for images, _ in make_dm_loaded(cifar_archive).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    unaugmented = [images for images, _ in make_dm_loaded(cifar_archive, hflip=False, translate=0).train_dataloader()]
    assert not any(torch.equal(a, b) for a, b in zip(first, unaugmented, strict=True))
    other_seed = [images for images, _ in make_dm_loaded(cifar_archive, seed=8).train_dataloader()]
    assert not torch.equal(first[0], other_seed[0])


def test_own_augmentation_runs_on_training_batches_only_with_the_batch_generator(cifar_archive):
    calls = []

    def invert_some(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append(images.dtype)
        chosen = torch.rand(len(images), generator=generator) < 0.5
        return torch.where(chosen[:, None, None, None], 255 - images, images)

    dm = make_dm_loaded(cifar_archive, augmentation=invert_some, hflip=False, translate=0)
    plain = make_dm_loaded(cifar_archive, hflip=False, translate=0)
    first, reference = next(iter(dm.train_dataloader()))[0], next(iter(plain.train_dataloader()))[0]
    assert calls == [torch.uint8] and not torch.equal(first, reference)
    assert torch.equal(first, next(iter(dm.train_dataloader()))[0])  # seeded per batch: reproducible
    next(iter(dm.val_dataloader()))
    assert len(calls) == 2  # the two training batches above; validation is never augmented


def test_a_training_loader_iterated_again_without_set_epoch_reshuffles_and_reaugments(cifar_archive):
    loader = make_dm_loaded(cifar_archive).train_dataloader()
    first, second = (torch.cat([images for images, _ in loader]) for _ in range(2))
    assert first.shape == second.shape and not torch.equal(first, second)
    loader.sampler.set_epoch(0)  # what Lightning and DDP loops call: the same epoch gives the same batches
    assert torch.equal(torch.cat([images for images, _ in loader]), first)


def make_dm_loaded(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    dm = make_dm(data_dir, **kwargs)
    dm.setup("fit")
    return dm


def reference_shift(image: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    return padded[:, pad + dy : pad + dy + 32, pad + dx : pad + dx + 32]


def test_augment_is_a_flip_plus_a_zero_padded_crop():
    images = torch.randint(1, 255, (200, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, hflip=True, max_shift=2, generator=torch.Generator().manual_seed(0))
    flips = 0
    for image, result in zip(images, out, strict=True):
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(reference_shift(image.flip(-1) if flip else image, dy, dx, 2), result)
        ]
        assert len(matches) == 1
        flips += matches[0][0]
    assert 70 < flips < 130
    assert torch.equal(augment(images, False, 0, torch.Generator()), images)


def test_16_bit_png_keeps_its_pixels(tmp_path):
    """Pillow's RGB conversion clips 16-bit grey to white; the decoder scales it to 8 bits instead."""
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    image = image_folders.read_image(tmp_path / "deep.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[2]) and image.min() == 0 and image.max() == 255
    assert torch.equal(image[0], torch.from_numpy(np.rint(ramp / 65535 * 255).astype(np.uint8)))


# --- decode cache: checksummed, self-healing, optional -------------------------------


def decoded_once(image_folder: Path, cache: Path) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """The test split decoded into ``cache``, and the cache file written for it."""
    images, labels = image_folders.load_folder_split(image_folder / "test", cache)
    (path,) = cache.glob("*.pt")
    return images, labels, path


def overwrite_pixels(path: Path, images: torch.Tensor) -> None:
    """Change image bytes inside the cache file in place: it still loads, with other pixels."""
    raw = bytearray(path.read_bytes())
    start = raw.find(images.numpy().tobytes()[:256])
    assert start > 0
    raw[start : start + 64] = bytes(255 - b for b in raw[start : start + 64])
    path.write_bytes(raw)


def spoil_cache(case: str, path: Path, images: torch.Tensor) -> None:
    if case == "overwritten bytes":
        overwrite_pixels(path, images)
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "keys missing":
        torch.save({"images": images}, path)
    elif case == "not a cache file":
        path.write_text("hello")


@pytest.mark.parametrize("case", ["overwritten bytes", "truncated", "keys missing", "not a cache file"])
def test_a_damaged_cache_is_rebuilt_with_a_notice(case, image_folder, isolated_cache, capsys):
    images, labels, path = decoded_once(image_folder, isolated_cache)
    spoil_cache(case, path, images)
    capsys.readouterr()
    again, again_labels = image_folders.load_folder_split(image_folder / "test", isolated_cache)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"the decoded-image cache '{path}' is damaged"), lines
    assert lines[0].endswith("decoding the images again")
    image_folders.load_folder_split(image_folder / "test", isolated_cache)
    assert capsys.readouterr().err == ""  # rebuilt: intact from now on


def fail_writing(error: Exception) -> Callable[..., None]:
    """A ``torch.save`` that writes part of the file, then fails like a full disk or a read-only folder."""

    def save(obj: object, file: BinaryIO) -> None:
        file.write(b"PK\x03\x04 partial")
        raise error

    return save


def os_error(number: int) -> OSError:
    return OSError(number, os.strerror(number))


# What torch.save raises: OSError writing to a file object, RuntimeError from its zip writer otherwise.
WRITE_FAILURES = {
    "disk full": os_error(errno.ENOSPC),
    "disk full in the zip writer": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704"),
    "permission denied": os_error(errno.EACCES),
    "read-only file system": os_error(errno.EROFS),
    "file name too long": os_error(errno.ENAMETOOLONG),
}


@pytest.mark.parametrize("case", ["a file in its place", *WRITE_FAILURES])
def test_an_unwritable_cache_warns_and_loading_goes_on(case, image_folder, isolated_cache, monkeypatch, capsys):
    cache = isolated_cache
    if case == "a file in its place":
        cache.write_text("not a folder")
    else:  # as root, chmod would not stop the write: fail the way the system would instead
        monkeypatch.setattr(torch, "save", fail_writing(WRITE_FAILURES[case]))
    images, labels = image_folders.load_folder_split(image_folder / "test", cache)
    assert images.shape == (30, 3, 32, 32) and len(labels) == 30
    assert len(image_folders.load_folder_split(image_folder / "train", cache)[1]) == 80
    lines = capsys.readouterr().err.splitlines()  # one warning for both splits
    assert len(lines) == 1 and lines[0].startswith("warning: cannot write the decoded-image cache"), lines
    assert lines[0].endswith("pass a writable --cache-dir")
    assert not list(cache.parent.rglob("*.tmp")), "a failed write must remove its temporary file"


@pytest.mark.parametrize("name", ["x" * 250, "é" * 125], ids=["250 letters", "250 bytes of accents"])
def test_a_data_folder_with_a_long_name_is_cached_under_a_short_name(name, tmp_path, isolated_cache, capsys):
    folder = write_image_folder(tmp_path / name, train_per_class=1, test_per_class=1)
    image_folders.load_folder_split(folder / "test", isolated_cache)
    (cached,) = isolated_cache.glob("*.pt")
    assert len(cached.name.encode()) < 200 and cached.name.startswith(name[:20])
    assert capsys.readouterr().err == ""  # written: no warning
    mtime = cached.stat().st_mtime_ns
    image_folders.load_folder_split(folder / "test", isolated_cache)
    assert cached.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""  # read back, not written again


def killed_process_pid() -> int:
    """The pid of a process that was killed (and reaped): no process has it now."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.kill()
    process.wait()
    return process.pid


def test_temporary_files_of_killed_cache_writers_are_removed_and_live_ones_kept(image_folder, isolated_cache):
    isolated_cache.mkdir()
    target = isolated_cache / "folder-test-0123456789abcdef0123.pt"
    killed = decode_cache.tmp_path_for(target, killed_process_pid())
    live = decode_cache.tmp_path_for(target, os.getpid())  # another writer in this very process
    old_foreign = target.with_name(f".tmp-0badcafe-1-12345678-{target.name}")  # from another machine, long ago
    new_foreign = target.with_name(f".tmp-0badcafe-2-12345678-{target.name}")  # from another machine, now
    for tmp in (killed, live, old_foreign, new_foreign):
        tmp.write_bytes(b"half a cache")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_foreign, (hours_ago, hours_ago))
    image_folders.load_folder_split(image_folder / "test", isolated_cache)
    assert sorted(isolated_cache.glob(".tmp-*")) == sorted([live, new_foreign])


def test_a_broken_link_image_is_named(image_folder):
    (image_folder / "train" / "dog" / "gone.png").symlink_to(image_folder / "nowhere.png")
    with pytest.raises(UserError, match=r"cannot read image '.*gone\.png' \(a link to a missing file\): replace"):
        make_dm(image_folder)


def test_decoding_a_cold_cache_shows_progress(image_folder, isolated_cache, monkeypatch, capsys):
    monkeypatch.setattr(image_folders, "DECODE_PROGRESS_AFTER_S", 0.0)  # these few images decode at once
    image_folders.load_folder_split(image_folder / "train", isolated_cache)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines  # no terminal here: a line when it starts, one when it ends
    assert lines[0].startswith(f"decoding 80 images in '{image_folder / 'train'}' (once, then cached)")
    assert re.fullmatch(r"decoded 80 images in \d+ s", lines[1])
    image_folders.load_folder_split(image_folder / "train", isolated_cache)
    assert capsys.readouterr().err == ""  # from the cache: nothing to wait for
