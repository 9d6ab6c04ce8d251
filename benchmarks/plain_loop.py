"""The same training as ``train.py``, written by hand in plain PyTorch: the yardstick for its wall time.

What a competent engineer would write without Lightning, doing the same work on the
same data: the uint8 tensors ``train.py`` loads (``lenet_lightning.sources``, with its
decode cache, so neither side decodes JPEGs on a warm run), the same 45,000/5,000
train/validation split, LeNet-5, the recipe's optimizer, schedule, loss,
augmentation and normalisation; validation after every epoch, the test split at the
end, the final weights saved. Lightning is never imported.

``--pipeline tensor`` (default) makes each batch by one indexing operation and
batch-wide transforms, as the project does. ``--pipeline pil`` is the PyTorch
tutorial's pipeline: each image becomes a PIL image and goes through
``Compose([ToTensor(), Normalize(...)])`` (after flip and crop when the recipe
augments) in a ``DataLoader(shuffle=True, num_workers=2)``; like the tutorial, it
does not validate (which only makes it faster). The recipe comes from a file that
``train.py --print-config`` wrote, so that no Lightning import is needed to know it::

    python train.py --print-config > default.yaml
    python train.py --print-config --recipe tutorial > tutorial.yaml
    python -m benchmarks.plain_loop --data-dir /tmp/cifar10-dev --config default.yaml --max-epochs 6
    python -m benchmarks.plain_loop --data-dir /tmp/cifar10-dev --config tutorial.yaml --pipeline pil --max-epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from lenet_lightning.batches import augment, normalize
from lenet_lightning.cifar10 import NORMALIZATIONS, default_cache_dir
from lenet_lightning.model import LeNet5
from lenet_lightning.sources import load_split

EVAL_BATCH = 1000  # evaluation needs no small batches


def tensor_batches(
    images: Tensor, labels: Tensor, recipe: dict[str, Any], epoch: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of augmented, normalised training batches made from the uint8 tensors."""
    generator = torch.Generator().manual_seed(epoch)
    mean, std = NORMALIZATIONS[recipe["normalization"]]
    for indices in torch.randperm(len(labels), generator=generator).split(recipe["batch_size"]):
        batch = images[indices]
        if recipe["hflip"] or recipe["translate"]:
            batch = augment(batch, recipe["hflip"], recipe["translate"], generator)
        yield normalize(batch, mean, std), labels[indices]


class PILImages(Dataset[tuple[Tensor, int]]):
    """``torchvision.datasets.CIFAR10``'s per-item work: uint8 array -> PIL image -> transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Any) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def pil_transform(recipe: dict[str, Any], train: bool) -> Any:
    """The tutorial's per-image transforms (torchvision is imported only here: the tensor pipeline needs none)."""
    from torchvision import transforms

    mean, std = NORMALIZATIONS[recipe["normalization"]]
    steps: list[Any] = []
    if train and recipe["hflip"]:
        steps.append(transforms.RandomHorizontalFlip())
    if train and recipe["translate"]:
        steps.append(transforms.RandomCrop(32, padding=recipe["translate"]))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def accuracy(model: torch.nn.Module, batches: Iterator[tuple[Tensor, Tensor]] | DataLoader[Any]) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    model.train()
    return correct / total


def eval_batches(images: Tensor, labels: Tensor, recipe: dict[str, Any]) -> Iterator[tuple[Tensor, Tensor]]:
    mean, std = NORMALIZATIONS[recipe["normalization"]]
    for start in range(0, len(labels), EVAL_BATCH):
        yield normalize(images[start : start + EVAL_BATCH], mean, std), labels[start : start + EVAL_BATCH]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 archive folder or image folder (default: data)")
    parser.add_argument("--config", type=Path, required=True, help="the recipe: what train.py --print-config prints")
    parser.add_argument("--pipeline", choices=("tensor", "pil"), default="tensor", help="see above (default: tensor)")
    parser.add_argument("--max-epochs", type=int, help="(default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    parser.add_argument("--val-size", type=int, default=5000, help="(default: 5000)")
    args = parser.parse_args(argv)
    recipe = yaml.safe_load(args.config.read_text())
    recipe.update({k: v for k, v in (("max_epochs", args.max_epochs), ("batch_size", args.batch_size)) if v})
    torch.manual_seed(0)
    data_dir, cache = Path(args.data_dir), default_cache_dir()
    images, labels = load_split(data_dir, True, cache)
    order = torch.randperm(len(labels))
    val, train = order[: args.val_size], order[args.val_size :]
    train_images, train_labels = images[train], labels[train]
    val_images, val_labels = images[val], labels[val]

    model = LeNet5()
    nesterov = recipe["nesterov"] and recipe["momentum"] > 0
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"], nesterov=nesterov,
        weight_decay=recipe["weight_decay"],
    )  # fmt: skip
    steps_per_epoch = -(-len(train_labels) // recipe["batch_size"])
    scheduler = None
    if recipe["scheduler"] == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe["lr"], total_steps=recipe["max_epochs"] * steps_per_epoch,
            pct_start=recipe["warmup_fraction"], cycle_momentum=False,
        )  # fmt: skip
    pil_loader = None
    if args.pipeline == "pil":
        dataset = PILImages(train_images, train_labels, pil_transform(recipe, train=True))
        pil_loader = DataLoader(dataset, batch_size=recipe["batch_size"], shuffle=True, num_workers=2)
    for epoch in range(recipe["max_epochs"]):
        start, running = time.perf_counter(), torch.zeros(())
        batches = pil_loader if pil_loader is not None else tensor_batches(train_images, train_labels, recipe, epoch)
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs), targets, label_smoothing=recipe["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach()
        line = f"epoch {epoch}: train loss {running.item() / steps_per_epoch:.3f}"
        if args.pipeline == "tensor":  # the tutorial does not validate
            line += f", val acc {accuracy(model, eval_batches(val_images, val_labels, recipe)):.4f}"
        print(f"{line} ({time.perf_counter() - start:.1f} s)", flush=True)
    test_images, test_labels = load_split(data_dir, False, cache)
    if args.pipeline == "pil":
        test_set = PILImages(test_images, test_labels, pil_transform(recipe, train=False))
        test_acc = accuracy(model, DataLoader(test_set, batch_size=recipe["batch_size"], num_workers=2))
    else:
        test_acc = accuracy(model, eval_batches(test_images, test_labels, recipe))
    with tempfile.TemporaryDirectory() as folder:
        torch.save(model.state_dict(), Path(folder) / "lenet.pt")  # train.py writes checkpoints too
    print(f"test acc {test_acc:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
