"""Checkpoints saved by every way in (train.py, LightningCLI, a plain Trainer) evaluate and resume with train.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lenet_lightning import CIFAR10DataModule, LeNetClassifier
from lenet_lightning.cli import main, run
from lenet_lightning.lightning_cli import main as lightning_cli
from tests.conftest import ROOT, error_line


@pytest.fixture(scope="module")
def foreign_checkpoints(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs of 4 steps saved by a plain Trainer (its first epoch's checkpoint) and by LightningCLI (its last)."""
    root = tmp_path_factory.mktemp("foreign")
    every_epoch = ModelCheckpoint(save_top_k=-1)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, default_root_dir=root / "plain", callbacks=[every_epoch])
    data = CIFAR10DataModule(str(cifar_archive), batch_size=32, val_size=100)
    trainer.fit(LeNetClassifier(lr=0.02), datamodule=data)
    cli = lightning_cli(
        [
            *("fit", "--data.data_dir", str(cifar_archive), "--data.batch_size", "32", "--data.val_size", "100"),
            *("--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--model.lr", "0.02"),
            *("--trainer.default_root_dir", str(root / "cli"), "--trainer.enable_progress_bar", "false"),
        ]
    )
    cli_checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(cli_checkpoint, ModelCheckpoint)
    first_epoch = next(Path(every_epoch.dirpath or "").glob("epoch=0-*.ckpt"))
    return {"plain": first_epoch, "cli": Path(cli_checkpoint.best_model_path)}


@pytest.mark.parametrize("saved_by", ["plain", "cli"])
def test_evaluate_takes_the_settings_from_a_checkpoint_saved_by(saved_by, foreign_checkpoints, capsys):
    checkpoint = foreign_checkpoints[saved_by]
    metrics = main(["--evaluate", "--ckpt-path", str(checkpoint), "--accelerator", "cpu"])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert "overall" in capsys.readouterr().out
    [result] = checkpoint.parent.parent.glob(f"eval_{checkpoint.stem}_*_metrics.json")
    assert json.loads(result.read_text())["test/acc"] == pytest.approx(metrics["test/acc"])


@pytest.mark.parametrize("saved_by", ["plain", "cli"])
def test_resuming_a_checkpoint_saved_by_another_entry_point_continues_in_a_new_run_folder(
    saved_by, foreign_checkpoints, tmp_path, capsys
):
    checkpoint = foreign_checkpoints[saved_by]
    before = sorted(p.name for p in checkpoint.parent.parent.rglob("*"))
    argv = ["--ckpt-path", str(checkpoint), "--max-epochs", "2", "--log-dir", str(tmp_path), "--accelerator", "cpu"]
    metrics = main(argv)
    run_dir = tmp_path / "lenet" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    # The checkpoint's own settings (its lr, its data), the run options given now.
    assert (config["lr"], config["batch_size"], config["val_size"], config["max_epochs"]) == (0.02, 32, 100, 2)
    assert json.loads((run_dir / "test_metrics.json").read_text()) == pytest.approx(metrics)
    # The other tool's run folder is left exactly as it was.
    assert sorted(p.name for p in checkpoint.parent.parent.rglob("*")) == before
    capsys.readouterr()


def test_resuming_with_another_schedule_length_is_refused_in_one_line(foreign_checkpoints, tmp_path, capsys):
    argv = ["--ckpt-path", str(foreign_checkpoints["plain"]), "--max-epochs", "3", "--log-dir", str(tmp_path)]
    assert run([*argv, "--accelerator", "cpu"]) == 2
    assert error_line(capsys) == (
        "error: --max-epochs must be 2 to continue this checkpoint's learning-rate schedule (32 steps, 16 per epoch), "
        "got 3"
    )


def test_a_finished_run_is_not_resumed_and_last_skips_it(small_checkpoint, tmp_path, capsys):
    run_dir = small_checkpoint.parent.parent
    results = (run_dir / "test_metrics.json").read_text()
    assert run(["--ckpt-path", str(run_dir / "checkpoints" / "last.ckpt")]) == 2
    line = error_line(capsys)
    assert "has finished (its results are in test_metrics.json), so resuming it would rewrite them" in line
    assert "--evaluate --ckpt-path" in line and (run_dir / "test_metrics.json").read_text() == results
    log_dir = run_dir.parent.parent
    assert run(["--ckpt-path", "last", "--log-dir", str(log_dir)]) == 2
    assert "every run under" in error_line(capsys)


def test_run_folders_are_exactly_version_and_digits(small_checkpoint, tmp_path, capsys):
    from lenet_lightning.runs import find_last_checkpoint, next_version

    experiment = tmp_path / "lenet"
    for name in ("version_1_0", "version_0.bak", "version_²", "version_3"):
        (experiment / name / "checkpoints").mkdir(parents=True)
        (experiment / name / "checkpoints" / "last.ckpt").write_bytes(small_checkpoint.read_bytes())
    assert next_version(experiment) == 4
    assert find_last_checkpoint(tmp_path, "lenet").parent.parent.name == "version_3"


@pytest.fixture
def unfinished_run(small_checkpoint, tmp_path) -> Path:
    """A copy of a train.py run folder whose test results are gone: a run that has not finished."""
    run_dir = tmp_path / "logs" / "lenet" / "version_0"
    shutil.copytree(small_checkpoint.parent.parent, run_dir)
    (run_dir / "test_metrics.json").unlink()
    return run_dir


def test_a_checkpoint_copied_into_your_own_folder_resumes_into_a_new_run_folder(unfinished_run, tmp_path, capsys):
    mine = tmp_path / "proj"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own file\n")
    shutil.copy(unfinished_run / "checkpoints" / "last.ckpt", mine / "model.ckpt")
    main(["--ckpt-path", str(mine / "model.ckpt"), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"])
    capsys.readouterr()
    assert (mine / "config.yaml").read_text() == "my: own file\n"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "model.ckpt"]
    assert (tmp_path / "logs" / "lenet" / "version_1" / "test_metrics.json").is_file()
    assert not (unfinished_run / "test_metrics.json").exists()


def test_a_checkpoint_reached_through_a_link_resumes_in_the_folder_it_lies_in(unfinished_run, tmp_path, capsys):
    link = tmp_path / "latest.ckpt"
    link.symlink_to(unfinished_run / "checkpoints" / "last.ckpt")
    main(["--ckpt-path", str(link), "--accelerator", "cpu"])
    capsys.readouterr()
    assert (unfinished_run / "test_metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.ckpt", "logs"]


def test_evaluations_on_folders_with_the_same_name_keep_their_own_files(small_checkpoint, cifar_archive, tmp_path):
    other = tmp_path / "elsewhere" / cifar_archive.name
    shutil.copytree(cifar_archive, other)
    for data_dir in (cifar_archive, other):
        assert run(["--evaluate", "--ckpt-path", str(small_checkpoint), "--data-dir", str(data_dir)]) == 0
    run_dir = small_checkpoint.parent.parent
    assert len(list(run_dir.glob(f"eval_{small_checkpoint.stem}_{cifar_archive.name}_*_metrics.json"))) == 2


def test_evaluate_prints_only_results_on_stdout(small_checkpoint, capsys):
    assert run(["--evaluate", "--ckpt-path", str(small_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("class") and "it/s" not in out and "Testing" not in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--evaluate", "--export", "bundle"], "error: --evaluate and --export cannot be combined"),
        (["--evaluate", "--predict", "x.png"], "error: --evaluate and --predict cannot be combined"),
        (["--print-config", "--evaluate"], "error: --evaluate and --print-config cannot be combined"),
    ],
)
def test_conflicting_modes_are_refused_in_one_line(flags, message, small_checkpoint, tmp_path, capsys):
    assert run([*flags, "--ckpt-path", str(small_checkpoint), "--log-dir", str(tmp_path)]) == 2
    assert error_line(capsys).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_uses_the_checkpoints_own_normalisation_and_resume_refuses_it(
    small_checkpoint, cifar_archive, tmp_path, capsys
):
    from lenet_lightning.checkpoints import load_checkpoint
    from lenet_lightning.evaluation import evaluate
    from lenet_lightning.inference import classifier_from_checkpoint
    from lenet_lightning.sources import load_split

    checkpoint = torch.load(small_checkpoint, weights_only=True)
    checkpoint["datamodule_hyper_parameters"].update(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    custom = tmp_path / "custom.ckpt"
    torch.save(checkpoint, custom)
    images, labels = load_split(cifar_archive, train=False, cache_dir=tmp_path / "cache")
    classifier, _ = classifier_from_checkpoint(load_checkpoint(custom))
    expected = (classifier(images).argmax(dim=1) == labels).float().mean().item()
    metrics = evaluate(custom, {"data_dir": str(cifar_archive)})
    assert metrics["test/acc"] == pytest.approx(expected)
    assert run(["--ckpt-path", str(custom), "--log-dir", str(tmp_path / "logs")]) == 2
    assert "was trained with a normalisation of its own (mean/std)" in error_line(capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--evaluate", "--config", "x.yaml"], "error: --config has no effect with --evaluate: leave it out"),
        (["--predict", "x.png", "--lr", "5"], "error: --lr has no effect with --predict: leave it out"),
        (["--export", "b", "--seed", "3"], "error: --seed has no effect with --export: leave it out"),
        (["--evaluate", "--fast-dev-run"], "error: --fast-dev-run has no effect with --evaluate: leave it out"),
        (["--json"], "error: --json has no effect with training: leave it out"),
    ],
)
def test_a_flag_the_chosen_mode_does_not_use_is_refused(flags, message, small_checkpoint, tmp_path, capsys):
    assert run([*flags, "--ckpt-path", str(small_checkpoint)]) == 2
    assert error_line(capsys) == message


def test_python_callers_get_values_named_before_anything_runs(small_checkpoint, tmp_path):
    from lenet_lightning import experiment
    from lenet_lightning.errors import SettingError
    from lenet_lightning.evaluation import evaluate
    from lenet_lightning.settings import resolve_settings

    settings = resolve_settings({"log_dir": str(tmp_path), "seed": "abc"})
    with pytest.raises(SettingError, match=r"^seed must be a whole number, got 'abc'$"):
        experiment.train(settings)
    with pytest.raises(SettingError, match=r"^accelerator must be one of"):
        evaluate(small_checkpoint, {"accelerator": "tpu"})
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_to_start_removes_every_log_folder_it_made(image_folder, tmp_path, capsys):
    assert run(["--data-dir", str(image_folder), "--log-dir", str(tmp_path / "deep" / "a" / "b")]) == 2
    assert "leaves no training images" in error_line(capsys)
    assert not (tmp_path / "deep").exists()


def test_every_package_folder_is_in_the_distribution():
    import fnmatch

    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = [
        str(init.parent.relative_to(ROOT)).replace("/", ".") for init in (ROOT / "lenet_lightning").rglob("__init__.py")
    ]
    assert len(packages) > 1 and all(
        any(fnmatch.fnmatch(p, pattern) for pattern in config["include"]) for p in packages
    )
