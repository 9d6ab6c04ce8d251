"""``LeNetClassifier``: the training system around :class:`~lenet_lightning.model.LeNet5`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from typing_extensions import override

from lenet_lightning.errors import SettingError
from lenet_lightning.model import LeNet5
from lenet_lightning.optimization import build_optimizer, build_scheduler, he_initialize
from lenet_lightning.validation import check_bool, check_choice, check_float, check_int

OptimizerName = Literal["sgd", "adamw"]
SchedulerName = Literal["onecycle", "cosine", "none"]
InitName = Literal["default", "he"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)
INITS: tuple[str, ...] = get_args(InitName)
Batch = tuple[Tensor, Tensor]


class LeNetClassifier(L.LightningModule):
    """Cross-entropy training of LeNet-5 with overall and per-class accuracy.

    The defaults are the project's default recipe (with :class:`CIFAR10DataModule`'s
    defaults and 30 epochs); ``train.py``, its config files and LightningCLI take their
    settings, defaults and help from this signature.

    Logs ``train/loss``, ``train/acc``, ``train/lr``, ``{val,test}/loss``,
    ``{val,test}/acc`` and ``{val,test}/acc_<class>``; with ``tta``, also ``test/acc_tta``
    and ``test/acc_tta_<class>``, kept apart from ``test/acc``. Accuracy is micro-averaged
    (the fraction of images classified correctly), per class it is the recall of
    each class. After each validation/test epoch the confusion matrix (counts,
    rows = true class) is kept in ``self.confusion[stage]`` for reports and pictures
    (``self.confusion["test_tta"]`` for the test-time-augmented predictions).

    Args:
        class_names: one name per class, used in metric names. ``None``: the
            DataModule's ``classes`` when training with one, else ``class_0`` ... .
        num_classes: number of classes when ``class_names`` is not given.
        optimizer: ``"sgd"`` or ``"adamw"``.
        lr: peak learning rate (the constant one with ``scheduler="none"``).
        momentum: SGD momentum (ignored by AdamW).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (decoupled for AdamW).
        decay_biases: apply ``weight_decay`` to biases too; ``False`` decays only the
            weights of convolutions and linear layers.
        label_smoothing: label smoothing of the training loss; validation and test
            report the plain cross-entropy so runs stay comparable.
        scheduler: ``"onecycle"``, ``"cosine"`` (linear warm-up, cosine decay to 0)
            or ``"none"``; stepped every batch.
        warmup_fraction: share of all steps spent warming up (one-cycle, cosine).
        init: ``"default"`` (PyTorch's layer initialisation, as the tutorial) or ``"he"``
            (Kaiming-normal weights for ReLU, zero biases). The network is the same either way.
        tta: test-time augmentation: the test step also classifies each image by its class
            probabilities averaged with those of its mirror image, into separate metrics.
    """

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        num_classes: int = 10,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.07,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.1,
        scheduler: SchedulerName = "onecycle",
        warmup_fraction: float = 0.15,
        init: InitName = "default",
        decay_biases: bool = False,
        tta: bool = False,
    ) -> None:
        super().__init__()
        validate_training(optimizer, lr, momentum, nesterov, weight_decay, label_smoothing, scheduler, warmup_fraction)
        check_choice("init", init, INITS)
        check_bool("decay_biases", decay_biases)
        check_bool("tta", tta)
        # A list, not a tuple: hparams.yaml and config files stay plain, safe-loadable YAML.
        class_names = check_class_names(class_names)
        num_classes = len(class_names) if class_names else check_int("num_classes", num_classes, minimum=1)
        self.save_hyperparameters()
        self.class_names = tuple(class_names or (f"class_{i}" for i in range(num_classes)))
        self.net = LeNet5(num_classes)
        if init == "he":
            he_initialize(self.net)
        self.tta = tta
        self.example_input_array = torch.zeros(1, 3, 32, 32)
        # One metric instance per stage and purpose: states never mix between stages.
        # Training predictions are argmaxes, valid by construction: skip the per-step input checks.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_per_class = MulticlassAccuracy(num_classes, average=None)
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_tta_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_tta_confmat = MulticlassConfusionMatrix(num_classes)
        self.confusion: dict[str, Tensor] = {}

    @override
    def forward(self, images: Tensor) -> Tensor:
        # Batches arrive in the weights' dtype (Lightning's precision plugin converts them), but
        # float32 images from elsewhere (example_input_array for the summary and the graph, a user's
        # own call) must work on a bf16-true or 64-true model too; the cast is free when dtypes match.
        return self.net(images.to(self.dtype))

    @override
    def setup(self, stage: str) -> None:
        """Take the DataModule's class names when none were given (metric names use them)."""
        classes = getattr(self.trainer.datamodule, "classes", None)  # type: ignore[attr-defined]
        if self.hparams["class_names"] is None and classes is not None and len(classes) == len(self.class_names):
            self.class_names = tuple(classes)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.hparams)
        scheduler = build_scheduler(optimizer, self.hparams, self._total_steps())
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a one-cycle schedule with another length, which would fail or change course mid-run.

        Checkpoints of LightningCLI or a plain Trainer do not record their epochs; their
        schedule's length does.
        """
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        saved = schedulers[0].get("total_steps")
        if saved is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        planned, epochs = self._total_steps(), self.trainer.max_epochs or 1
        if saved != planned:
            per_epoch = planned // epochs
            raise SettingError(
                "max_epochs",
                f"must be {saved // per_epoch} to continue this checkpoint's learning-rate schedule ({saved} steps, "
                f"{per_epoch} per epoch), got {epochs}",
            )

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def on_train_epoch_end(self) -> None:
        # Lightning computes the metric (over all processes) for the log, then resets it.
        self.log("train/acc", self.train_acc, prog_bar=True)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_end("val", "val/acc", self.val_acc_per_class, self.val_confmat)

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")
        if self.tta:
            self._tta_step(batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_end("test", "test/acc", self.test_acc_per_class, self.test_confmat)
        if self.tta:
            self._log_epoch_end("test_tta", "test/acc_tta", self.test_acc_tta_per_class, self.test_tta_confmat)

    @override
    def predict_step(self, batch: Batch | Tensor, batch_idx: int) -> Tensor:
        """Class probabilities for the batch's images (a batch of images, or of ``(images, labels)``)."""
        images = batch if isinstance(batch, Tensor) else batch[0]
        return self(images).softmax(dim=1)

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run, for the learning-rate schedule.

        Asked of the DataModule (its size does not depend on loop state) rather than
        ``trainer.estimated_stepping_batches``, which builds the training loader before a
        checkpoint's loop state is restored, so a run resumed mid-epoch would replay that
        epoch from its first batch (Lightning-AI/pytorch-lightning#20550). Other data sources fall back to it.
        """
        trainer = self.trainer
        steps_per_epoch = getattr(trainer.datamodule, "train_batches_per_epoch", None)  # type: ignore[attr-defined]
        by_epochs = trainer.max_steps == -1 and (trainer.max_epochs or 0) > 0  # else max_steps bounds the run
        if steps_per_epoch is None or not by_epochs or trainer.accumulate_grad_batches != 1:
            return int(trainer.estimated_stepping_batches)
        return trainer.max_epochs * steps_per_epoch(trainer.world_size)

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        images, targets = batch
        logits = self(images)
        smoothing = self.hparams["label_smoothing"] if stage == "train" else 0.0
        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
        preds = logits.argmax(dim=1)
        accuracy: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        accuracy.update(preds, targets)
        if stage != "train":
            getattr(self, f"{stage}_acc_per_class").update(preds, targets)
            getattr(self, f"{stage}_confmat").update(preds, targets)
        if stage == "train":
            # Each self.log costs Lightning about as much Python as a whole LeNet step at batch 4
            # (docs/performance.md). So training logs only on the steps whose values
            # Lightning writes out, and its accuracy once per epoch (on_train_epoch_end).
            if self._logs_this_step():
                self.log("train/loss", loss, prog_bar=True, batch_size=len(targets))
                self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
            return loss
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(targets))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _tta_step(self, batch: Batch) -> None:
        """Classify by the class probabilities averaged over each image and its mirror image.

        Training flips images at random, so both views are images the network learnt from.
        """
        images, targets = batch
        probabilities = self(images).softmax(dim=1) + self(images.flip(3)).softmax(dim=1)
        preds = probabilities.argmax(dim=1)
        for metric in (self.test_acc_tta, self.test_acc_tta_per_class, self.test_tta_confmat):
            metric.update(preds, targets)
        self.log("test/acc_tta", self.test_acc_tta, on_step=False, on_epoch=True, prog_bar=True)

    def _logs_this_step(self) -> bool:
        """Whether Lightning hands this training step's logged values to the loggers.

        Lightning's rule (every ``log_every_n_steps`` optimizer steps, counted from 1),
        plus every step of a fast dev run: values logged on other steps would only
        feed the progress bar.
        """
        trainer = self.trainer
        return (trainer.global_step + 1) % trainer.log_every_n_steps == 0 or bool(trainer.fast_dev_run)  # type: ignore[attr-defined]

    def _log_epoch_end(
        self, key: str, prefix: str, per_class: MulticlassAccuracy, confmat: MulticlassConfusionMatrix
    ) -> None:
        """Log ``<prefix>_<class>``, keep the confusion matrix as ``self.confusion[key]``, reset both metrics."""
        values = per_class.compute()  # already summed over all processes by torchmetrics
        # Every process holds the same values: "max" keeps them exact where Lightning's default
        # "mean" could round, and sync_dist=True tells Lightning they are meant to be global.
        per_class_values = {f"{prefix}_{name}": value for name, value in zip(self.class_names, values, strict=True)}
        self.log_dict(per_class_values, sync_dist=True, reduce_fx="max")
        self.confusion[key] = confmat.compute().cpu()
        per_class.reset()
        confmat.reset()


def validate_training(
    optimizer: str,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    label_smoothing: float,
    scheduler: str,
    warmup_fraction: float,
) -> None:
    """Reject training settings no run can use, naming the parameter (:class:`SettingError`)."""
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_float("lr", lr, above=0)
    check_float("momentum", momentum, minimum=0, below=1)
    check_bool("nesterov", nesterov)
    check_float("weight_decay", weight_decay, minimum=0)
    check_float("label_smoothing", label_smoothing, minimum=0, below=1)
    check_choice("scheduler", scheduler, SCHEDULERS)
    check_float("warmup_fraction", warmup_fraction, above=0, below=1)


def check_class_names(class_names: Sequence[str] | None) -> list[str] | None:
    """``class_names`` as a list of distinct, non-empty strings, or ``None``."""
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(name, str) and name for name in class_names):
        raise SettingError("class_names", f"must be a list of non-empty names, got {class_names!r}")
    names = list(class_names)
    if len(set(names)) != len(names) or not names:
        raise SettingError("class_names", f"must hold at least one name, each once, got {names}")
    return names
