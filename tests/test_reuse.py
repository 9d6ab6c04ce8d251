"""The DataModule and module reused as other projects would: a foreign model, a plain loop, LightningCLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import Tensor
from torch.nn import functional as F
from torchvision.models import resnet18

from lenet_lightning import CIFAR10_CLASSES, CIFAR10DataModule, LeNet5, LeNetClassifier
from lenet_lightning.lightning_cli import main as lightning_cli

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}


class ResNetClassifier(L.LightningModule):
    """A user's own module: torchvision's ResNet-18, nothing from this project."""

    def __init__(self) -> None:
        super().__init__()
        self.net = resnet18(num_classes=10)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_own_lightning_module_with_a_resnet_trains_and_predicts_with_only_forward(cifar_archive):
    dm = CIFAR10DataModule(str(cifar_archive), batch_size=16, eval_batch_size=16, val_size=100)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_predict_batches=2, **QUIET)
    model = ResNetClassifier()
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    # No predict_step: Lightning's default calls forward on each batch, which is the images alone.
    logits = trainer.predict(model, datamodule=dm)
    assert logits is not None and len(logits) == 2 and logits[0].shape == (16, 10)
    assert torch.equal(logits[0], model.eval()(next(iter(dm.predict_dataloader()))))


def test_a_loader_passed_to_a_trainer_without_the_datamodule_just_works(cifar_archive):
    dm = CIFAR10DataModule(str(cifar_archive), batch_size=16, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, **QUIET)
    trainer.fit(ResNetClassifier(), train_dataloaders=dm.train_dataloader())
    assert trainer.global_step == 3


def test_predict_with_the_datamodule_gives_probabilities(cifar_archive):
    dm = CIFAR10DataModule(str(cifar_archive), batch_size=50, val_size=100)
    trainer = L.Trainer(**QUIET)
    batches = trainer.predict(LeNetClassifier(class_names=CIFAR10_CLASSES), datamodule=dm)
    assert batches is not None
    probabilities = torch.cat(batches)
    assert probabilities.shape == (200, 10) and torch.allclose(probabilities.sum(dim=1), torch.ones(200))


def test_the_module_takes_its_class_names_from_the_datamodule(cifar_archive):
    dm = CIFAR10DataModule(str(cifar_archive), batch_size=50, val_size=100)
    model = LeNetClassifier()
    L.Trainer(**QUIET).test(model, datamodule=dm, verbose=False)
    assert model.class_names == CIFAR10_CLASSES


def test_plain_pytorch_loop_over_the_loader(cifar_archive):
    """The README's plain loop: ``for images, labels in loader``, nothing from Lightning."""
    torch.manual_seed(0)
    dm = CIFAR10DataModule(str(cifar_archive), batch_size=50, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    net = LeNet5()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = dm.train_dataloader()
    assert loader.batch_size == 50 and len(loader) == 10
    losses = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)  # a new order each epoch, as with DistributedSampler
        for images, labels in loader:
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3


def test_lightning_cli_fits_saves_its_config_and_prints_it(cifar_archive, tmp_path, capsys):
    args = [
        *("--data.data_dir", str(cifar_archive), "--data.batch_size", "32", "--data.val_size", "100"),
        *("--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)),
        *("--trainer.enable_progress_bar", "false", "--model.lr", "0.02"),
    ]
    cli = lightning_cli(["fit", *args])
    assert cli.trainer.global_step == 16 and cli.model.class_names == CIFAR10_CLASSES
    saved = next(tmp_path.rglob("config.yaml"))
    config = yaml.safe_load(saved.read_text())
    assert config["model"]["lr"] == 0.02 and config["data"]["batch_size"] == 32
    with pytest.raises(SystemExit) as exited:
        lightning_cli(["fit", "--config", str(saved), "--print_config"])
    assert exited.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["data_dir"] == str(cifar_archive)
    assert Path(config["data"]["data_dir"]) == cifar_archive
