"""Recipe options: He initialisation, weight decay on weights only, reflect padding, weight
averaging (EMA), test-time augmentation, and the recipes that combine them."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lenet_lightning import CIFAR10_CLASSES, LeNetClassifier, experiment
from lenet_lightning.batches import augment
from lenet_lightning.cli import main
from lenet_lightning.optimization import build_optimizer
from lenet_lightning.settings import RECIPES, SETTINGS, recipe_settings, resolve_settings
from tests.conftest import last_checkpoints, write_cifar_archive
from tests.test_module import LogitsFromImage

pytestmark = pytest.mark.usefixtures("one_thread")


def test_he_init_changes_only_the_initial_weights():
    torch.manual_seed(0)
    default = LeNetClassifier()
    torch.manual_seed(0)
    he = LeNetClassifier(init="he")
    assert [(k, v.shape) for k, v in he.state_dict().items()] == [(k, v.shape) for k, v in default.state_dict().items()]
    assert sum(p.numel() for p in he.net.parameters()) == 62006
    assert repr(he.net) == repr(default.net)
    for layer in (he.net.conv1, he.net.conv2, he.net.fc1, he.net.fc2, he.net.fc3):
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.25)
        assert not layer.bias.any()
    assert not torch.equal(he.net.fc1.weight, default.net.fc1.weight)


def test_weight_decay_on_weights_only_leaves_biases_undecayed():
    model = LeNetClassifier(weight_decay=1e-3, decay_biases=False)
    groups = build_optimizer(model.parameters(), model.hparams).param_groups
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == 10
    (everything,) = build_optimizer(model.parameters(), {**model.hparams, "decay_biases": True}).param_groups
    assert everything["weight_decay"] == 1e-3 and len(everything["params"]) == 10


def test_reflect_padding_shifts_in_the_mirrored_edge():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, hflip=False, max_shift=4, generator=torch.Generator().manual_seed(0), pad_mode="reflect")
    padded = torch.nn.functional.pad(images, (4,) * 4, mode="reflect")
    for index, (image, result) in enumerate(zip(padded, out, strict=True)):
        crops = [image[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(crop, result) for crop in crops), index


def test_recipes_are_differences_from_the_constructors_defaults():
    assert RECIPES["default"] == {} and set().union(*RECIPES.values()) <= set(SETTINGS)
    tutorial = recipe_settings("tutorial")
    values = ("batch_size", "lr", "momentum", "max_epochs", "normalization", "scheduler", "nesterov", "weight_decay")
    assert [tutorial[key] for key in values] == [4, 0.001, 0.9, 5, "half", "none", False, 0.0]
    assert (tutorial["init"], tutorial["ema_decay"], tutorial["decay_biases"]) == ("default", 0.0, True)
    fast = resolve_settings({"recipe": "fast", "lr": 0.2})
    assert fast["lr"] == 0.2 and fast["max_epochs"] == 4 and fast["recipe"] == "fast" and not fast["tta"]


def mirrored_votes(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Images whose plain view weakly predicts ``plain`` and whose mirror image strongly predicts ``mirrored``.

    ``LogitsFromImage`` reads logits from the first 10 pixels of row 0, channel 0; the
    mirror image moves column ``31 - c`` to column ``c``.
    """
    images = torch.zeros(len(plain), 3, 32, 32)
    images[torch.arange(len(plain)), 0, 0, plain] = 1.0
    images[torch.arange(len(plain)), 0, 0, 31 - mirrored] = 5.0
    return images


def test_tta_is_logged_apart_and_never_changes_test_acc():
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2)
    plain = targets.clone()
    plain[:10] = (targets[:10] + 1) % 10  # the plain view is wrong on the first 10 images ...
    mirrored = targets.clone()
    mirrored[10:15] = (targets[10:15] + 1) % 10  # ... the mirror image on 5 others, and it is the confident one
    loader = DataLoader(TensorDataset(mirrored_votes(plain, mirrored), targets), batch_size=7)
    results = {}
    for tta in (False, True):
        model = LeNetClassifier(class_names=CIFAR10_CLASSES, tta=tta)
        model.net = LogitsFromImage()
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        results[tta] = trainer.test(model, dataloaders=loader, verbose=False)[0]
    assert results[False]["test/acc"] == results[True]["test/acc"] == pytest.approx(0.5)
    assert "test/acc_tta" not in results[False]
    assert results[True]["test/acc_tta"] == pytest.approx(15 / 20)
    assert results[True]["test/acc_tta_truck"] == pytest.approx(1.0)  # the mirror image corrects the plain view
    assert results[True]["test/acc_tta_airplane"] == pytest.approx(0.5)  # and misleads it once
    assert model.confusion["test_tta"].diag().sum() == 15 and model.confusion["test"].diag().sum() == 10
    metrics = [model.test_acc, model.test_acc_per_class, model.test_acc_tta, model.test_acc_tta_per_class]
    assert len({id(m) for m in metrics}) == len(metrics)


class CrashAtStep(Callback):
    """Raises after the given optimizer step (the run's last.ckpt is older: a crash, not a save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class TestedWeights(Callback):
    """Keeps the weights the model is tested with."""

    def on_test_start(self, trainer, pl_module):
        self.weights = {key: value.clone() for key, value in pl_module.state_dict().items()}


def test_ema_checkpoints_hold_averaged_weights_tta_metrics_and_resume_exactly(tmp_path, monkeypatch):
    data = write_cifar_archive(tmp_path / "data", train_per_class=30, test_per_class=5)
    # 300 - 50 = 250 images in batches of 25: 10 steps per epoch; step saves at 5, 15 (mid-epoch).
    flags = ["--data-dir", str(data), "--accelerator", "cpu", "--batch-size", "25", "--val-size", "50"]
    flags += ["--max-epochs", "2", "--checkpoint-every-n-steps", "5", "--log-every-n-steps", "5"]
    flags += ["--ema-decay", "0.8", "--init", "he", "--no-decay-biases", "--tta"]
    build_trainer = experiment.build_trainer
    tested = TestedWeights()

    def recording_trainer(settings, logger, run_dir, fast_dev_run, extra_callbacks):
        return build_trainer(settings, logger, run_dir, fast_dev_run, [*extra_callbacks, tested])

    monkeypatch.setattr(experiment, "build_trainer", recording_trainer)
    whole = main([*flags, "--log-dir", str(tmp_path / "whole")])
    assert set(whole) >= {"test/acc", "test/acc_tta"} | {f"test/acc_tta_{name}" for name in CIFAR10_CLASSES}
    run_dir = tmp_path / "whole" / "lenet" / "version_0"
    assert json.loads((run_dir / "test_metrics.json").read_text()) == pytest.approx(whole)

    def crashing_trainer(settings, logger, run_dir, fast_dev_run, extra_callbacks):
        return build_trainer(settings, logger, run_dir, fast_dev_run, [*extra_callbacks, CrashAtStep(17)])

    monkeypatch.setattr(experiment, "build_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*flags, "--log-dir", str(tmp_path / "crashed")])
    monkeypatch.setattr(experiment, "build_trainer", build_trainer)
    last = tmp_path / "crashed" / "lenet" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 15
    resumed = main(["--ckpt-path", "last", "--log-dir", str(tmp_path / "crashed")])
    assert resumed == whole

    ends = last_checkpoints(*(tmp_path / name / "lenet" / "version_0" for name in ("whole", "crashed")))
    assert ends[0]["global_step"] == ends[1]["global_step"] == 20
    assert ends[0]["averaging_state"]["n_averaged"] == ends[1]["averaging_state"]["n_averaged"] == 20
    for part in ("state_dict", "current_model_state"):
        for key, value in ends[0][part].items():
            assert torch.equal(ends[1][part][key], value), (part, key)
    # The averaged weights are what the checkpoint's model is; the trained ones are kept beside them.
    assert not torch.equal(ends[0]["state_dict"]["net.fc3.weight"], ends[0]["current_model_state"]["net.fc3.weight"])
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    averaged = torch.load(best, weights_only=True)["state_dict"]
    assert tested.weights.keys() == averaged.keys()
    assert all(torch.equal(tested.weights[key], value) for key, value in averaged.items())
    evaluated = main(["--evaluate", "--ckpt-path", str(best), "--no-tta"])
    assert evaluated["test/acc"] == whole["test/acc"] and "test/acc_tta" not in evaluated
    assert main(["--evaluate", "--ckpt-path", str(best)]) == whole  # --tta came from the run's settings
