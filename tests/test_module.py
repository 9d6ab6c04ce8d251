import itertools
import json

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lenet_lightning import CIFAR10_CLASSES, LeNetClassifier
from lenet_lightning.errors import SettingError
from lenet_lightning.optimization import warmup_cosine
from lenet_lightning.reporting import format_table, metrics_from_confusion, write_json


class LogitsFromImage(nn.Module):
    """A stand-in network whose 'images' carry their own logits, so predictions are known."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)  # an optimizer needs at least one parameter

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1)[:, :10]


def images_predicting(preds: Tensor) -> Tensor:
    images = torch.zeros(len(preds), 3, 32, 32)
    images.view(len(preds), -1)[torch.arange(len(preds)), preds] = 1.0
    return images


# Known targets and predictions: hand-computed per-class accuracy below.
TARGETS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9])
PREDS = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 2, 5, 4, 5, 6, 7, 0, 9, 9, 1, 9, 9])
EXPECTED = {"airplane": 2 / 4, "automobile": 1 / 2, "bird": 3 / 3, "cat": 0 / 1, "deer": 1.0, "dog": 1.0,
            "frog": 1.0, "horse": 1.0, "ship": 0.0, "truck": 4 / 5}  # fmt: skip


@pytest.fixture
def tested_module():
    model = LeNetClassifier(class_names=CIFAR10_CLASSES)
    model.net = LogitsFromImage()
    images = images_predicting(PREDS)
    # Uneven batches (7, 7, 6): accuracy must be over images, not an average of batch scores.
    loader = DataLoader(TensorDataset(images, TARGETS), batch_size=7)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(model, dataloaders=loader, verbose=False)[0]
    return model, results


def test_per_class_accuracy_matches_hand_computation(tested_module):
    _, results = tested_module
    for name, value in EXPECTED.items():
        assert results[f"test/acc_{name}"] == pytest.approx(value), name


def test_overall_accuracy_is_micro(tested_module):
    _, results = tested_module
    correct = (PREDS == TARGETS).sum().item()
    assert results["test/acc"] == pytest.approx(correct / len(TARGETS))  # 14/20, not the macro mean
    assert results["test/acc"] != pytest.approx(sum(EXPECTED.values()) / 10)


def test_confusion_matrix_and_report(tested_module):
    model, results = tested_module
    confusion = model.confusion["test"]
    assert confusion[0].tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert confusion.sum() == len(TARGETS)
    metrics = metrics_from_confusion(confusion, CIFAR10_CLASSES)
    assert len(metrics) == 11
    for key, value in metrics.items():
        assert value == pytest.approx(results[key]), key
    table = format_table(confusion, CIFAR10_CLASSES)
    assert "truck" in table
    assert "80.00 %        4/5" in table
    assert "70.00 %       14/20" in table


def test_a_class_without_test_images_is_null_in_valid_json(tmp_path):
    confusion = torch.eye(10, dtype=torch.int64) * 3
    confusion[3, 3] = 0  # no cat in the test split
    metrics = metrics_from_confusion(confusion, CIFAR10_CLASSES)
    assert metrics["test/acc_cat"] is None and metrics["test/acc"] == 1.0
    write_json(tmp_path / "metrics.json", metrics)
    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)  # NaN: not JSON
    assert written["test/acc_cat"] is None and written["test/acc_dog"] == 1.0
    assert "\ncat              -         0/0\n" in format_table(confusion, CIFAR10_CLASSES)


def test_non_finite_numbers_are_written_as_null_never_as_nan(tmp_path):
    write_json(tmp_path / "nan.json", {"test/acc": float("nan"), "test/acc_cat": float("inf"), "test/acc_dog": 0.5})
    written = json.loads((tmp_path / "nan.json").read_text(), parse_constant=pytest.fail)  # NaN, Infinity: not JSON
    assert written == {"test/acc": None, "test/acc_cat": None, "test/acc_dog": 0.5}


def test_metrics_of_stages_are_separate_instances():
    model = LeNetClassifier()
    metrics = [model.train_acc, model.val_acc, model.test_acc, model.val_acc_per_class, model.test_acc_per_class]
    assert len({id(m) for m in metrics}) == len(metrics)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, "lr must be above 0, got -0.1"),
        ({"lr": "0.1"}, "lr must be a number, got '0.1'"),
        ({"lr": float("nan")}, "lr must be a finite number, got nan"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, adamw, got 'lbfgs'"),
        ({"scheduler": "step"}, "scheduler must be one of onecycle, cosine, none, got 'step'"),
        ({"momentum": 1.5}, "momentum must be below 1, got 1.5"),
        ({"label_smoothing": 1.0}, "label_smoothing must be below 1, got 1.0"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number, got inf"),
        ({"nesterov": "yes"}, "nesterov must be true or false, got 'yes'"),
        ({"class_names": "cat"}, "class_names must be a list of non-empty names, got 'cat'"),
    ],
)
def test_bad_arguments_are_refused_with_a_value_error_naming_the_parameter(kwargs, message):
    with pytest.raises(SettingError) as refused:
        LeNetClassifier(**kwargs)
    assert isinstance(refused.value, ValueError)
    assert str(refused.value) == message and refused.value.parameter == next(iter(kwargs))


def test_warmup_cosine_shape():
    factors = [warmup_cosine(step, 10, 100) for step in range(100)]
    assert factors[9] == pytest.approx(1.0)
    assert factors[0] == pytest.approx(0.1)
    assert max(factors) == pytest.approx(1.0)
    assert factors[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_class_names_default_to_numbered_names_and_set_the_output_size():
    assert LeNetClassifier(num_classes=3).class_names == ("class_0", "class_1", "class_2")
    assert LeNetClassifier(class_names=["a", "b"]).net.fc3.out_features == 2
