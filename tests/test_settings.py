"""One source of truth: the constructors are the recipe, and every way in is checked the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lenet_lightning import CIFAR10DataModule, LeNetClassifier
from lenet_lightning.cli import build_parser, main, run
from lenet_lightning.errors import SettingError
from lenet_lightning.settings import DATA_KEYS, DEFAULTS, MODEL_KEYS, SETTINGS, RunOptions, resolve_settings
from tests.conftest import ROOT, error_line


def test_the_constructors_defaults_are_what_print_config_shows(tmp_path, capsys):
    printed = yaml.safe_load(_print_config(capsys, "--log-dir", str(tmp_path)))
    model, data = dict(LeNetClassifier().hparams), dict(CIFAR10DataModule().hparams)
    assert {key: model[key] for key in MODEL_KEYS} == {key: printed[key] for key in MODEL_KEYS}
    assert {key: data[key] for key in DATA_KEYS} == {key: printed[key] for key in DATA_KEYS}
    assert printed["recipe"] == "default" and printed["max_epochs"] == RunOptions().max_epochs == 30
    assert (printed["lr"], printed["batch_size"], printed["decay_biases"]) == (0.07, 128, False)
    assert not (tmp_path / "lenet").exists()


def test_every_constructor_argument_with_a_plain_type_is_a_flag_with_its_help_and_default():
    help_text = " ".join(build_parser().format_help().split())
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        assert flag in help_text and setting.help, name
        assert f"(default: {DEFAULTS[name]}" in help_text, name
    lr = '--lr LR peak learning rate (the constant one with scheduler="none") (default: 0.07 [fast: 0.05, tutorial'
    assert lr in help_text


def test_a_config_file_of_another_recipe_with_a_recipe_flag_is_labelled_by_its_values(tmp_path, capsys):
    fast = tmp_path / "fast.yaml"
    fast.write_text(_print_config(capsys, "--recipe", "fast", "--max-epochs", "7"))
    settings = yaml.safe_load(_print_config(capsys, "--config", str(fast), "--recipe", "default"))
    # The file's change from its recipe (max_epochs 7) stays; fast's own values do not.
    assert settings == {**resolve_settings({"recipe": "default"}), "max_epochs": 7}
    assert yaml.safe_load(_print_config(capsys, "--config", str(fast)))["lr"] == 0.05


def test_a_fraction_holds_out_that_share_of_the_training_images(image_folder):
    datamodule = CIFAR10DataModule(data_dir=image_folder, val_size=0.25, batch_size=4)
    datamodule.setup("fit")
    assert datamodule.train_split is not None and datamodule.val_split is not None
    assert (len(datamodule.val_split[1]), len(datamodule.train_split[1])) == (20, 60)


def test_a_folder_smaller_than_the_default_validation_split_says_so_and_how(image_folder, tmp_path, capsys):
    argv = ["--data-dir", str(image_folder), "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"]
    assert run(argv) == 2
    assert error_line(capsys) == (
        "error: --val-size 5000 leaves no training images (the training split has 80): hold out fewer images "
        "or a fraction, e.g. 0.1"
    )


BAD_CONFIG = {
    "max_epochs: abc": "max_epochs must be a whole number, got 'abc'",
    "seed: 1.5": "seed must be a whole number, got 1.5",
    "val_size: 100.5": "val_size must be a number of images (at least 1) or a fraction between 0 and 1, got 100.5",
    "lr: '0.1'": "lr must be a number, got '0.1'",
    "batch_size: 1.5": "batch_size must be a whole number, got 1.5",
    "translate: 2.5": "translate must be a whole number, got 2.5",
    "data_dir: null": "data_dir must be a non-empty path or name, got None",
    "max_epochs: .nan": "max_epochs must be a whole number, got nan",
    "weight_decay: .inf": "weight_decay must be a finite number, got inf",
    "accelerator: tpu": "accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'",
    "hflip: 'no'": "hflip must be true or false, got 'no'",
    "optimizer: lbfgs": "optimizer must be one of sgd, adamw, got 'lbfgs'",
    "strategy: nonsense": "strategy must be auto, ddp, ddp_spawn or another of Lightning's, got 'nonsense'",
}


@pytest.mark.parametrize("line", list(BAD_CONFIG))
def test_a_bad_config_value_is_one_line_naming_the_file_and_key_and_no_run_folder(
    line, cifar_archive, tmp_path, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(f"data_dir: {cifar_archive}\nval_size: 100\naccelerator: cpu\n{line}\n")  # the later key wins
    assert run(["--config", str(config), "--log-dir", str(tmp_path / "logs")]) == 2
    assert error_line(capsys) == f"error: --config '{config}': {BAD_CONFIG[line]}"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"lr: 0.1\nname: caf\xe9\n", "is not UTF-8 text (byte 17): save it as UTF-8"),
        (b"momentun: 0.9\n", "has unknown settings ['momentun']: remove them"),
        (b"lr: [0.1\n", "is not valid YAML"),
        (b"- lr\n", "holds no settings"),
    ],
)
def test_a_config_file_no_run_can_read_is_one_line(content, message, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    assert run(["--config", str(config), "--log-dir", str(tmp_path / "logs")]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weight-decay", "nan"], "error: --weight-decay must be a finite number, got nan"),
        (["--val-size", "0"], "error: --val-size must be at least 1, got 0"),
        (["--accelerator", "tpu"], "error: argument --accelerator: invalid choice: 'tpu'"),
        (["--strategy", "nonsense"], "error: --strategy must be auto, ddp, ddp_spawn or another of Lightning's, got"),
        (["--devices", "two"], "error: --devices must be auto, a number of devices or a list like 0,1, got 'two'"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_flag_and_no_run_folder(flags, message, cifar_archive, tmp_path, capsys):
    argv = ["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path / "logs"), *flags]
    assert run(argv) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "logs").exists()


def test_classes_called_from_python_raise_value_errors_named_by_their_parameter():
    with pytest.raises(ValueError, match=r"^val_size must be at least 1, got 0$") as refused:
        CIFAR10DataModule(val_size=0)
    assert isinstance(refused.value, SettingError) and refused.value.parameter == "val_size"
    with pytest.raises(ValueError, match=r"^max_epochs must be at least 1, got 0$"):
        RunOptions(max_epochs=0)


def test_a_run_leaves_the_process_as_it_found_it(cifar_archive, tmp_path, capsys):
    import logging
    import os
    import warnings

    import torch

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    switch = torch.utils.deterministic
    torch.backends.cudnn.benchmark = True  # a user's choice the run must not undo
    before = (
        logger.level,
        list(warnings.filters),
        torch.are_deterministic_algorithms_enabled(),
        switch.fill_uninitialized_memory,
        {
            key: os.environ.get(key)
            for key in ("PL_GLOBAL_SEED", "CUBLAS_WORKSPACE_CONFIG", "LENET_LIGHTNING_RUN_DIR", "LOCAL_RANK")
        },
        torch.random.get_rng_state(),
    )
    flags = ["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), "--val-size", "100", "--accelerator", "cpu"]
    main([*flags, "--max-epochs", "1", "--batch-size", "100", "--seed", "5"])
    capsys.readouterr()
    after = (
        logger.level,
        list(warnings.filters),
        torch.are_deterministic_algorithms_enabled(),
        switch.fill_uninitialized_memory,
        {key: os.environ.get(key) for key in before[4]},
        torch.random.get_rng_state(),
    )
    assert after[:5] == before[:5] and torch.equal(after[5], before[5])
    assert torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False


def test_the_installed_command_names_itself_and_the_version_is_the_packages(tmp_path):
    from importlib.metadata import version

    import lenet_lightning

    assert lenet_lightning.__version__ == version("lenet-lightning")
    command = Path(sys.executable).parent / "lenet-lightning"
    if not command.exists():
        pytest.skip("the package is not installed with its console script here")
    shown = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert shown.stdout.startswith("usage: lenet-lightning")


def _print_config(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    main(["--print-config", *flags])
    return capsys.readouterr().out


def test_lightning_cli_prints_the_same_settings_as_train_py(tmp_path, capsys):
    from lenet_lightning.lightning_cli import main as lightning_cli

    ours = yaml.safe_load(_print_config(capsys, "--log-dir", str(tmp_path)))
    with pytest.raises(SystemExit) as exited:
        lightning_cli(["fit", "--print_config"])
    assert exited.value.code == 0
    theirs = yaml.safe_load(capsys.readouterr().out)
    sections = {**theirs["model"], **theirs["data"], **theirs["trainer"]}
    shared = [key for key in ours if key in sections]
    assert {key: sections[key] for key in shared} == {key: ours[key] for key in shared}
    assert {"lr", "batch_size", "val_size", "max_epochs", "precision", "deterministic"} <= set(shared)
    assert theirs["seed_everything"] is True  # LightningCLI's default, which here means the data's seed


def test_lightning_cli_seeds_everything_with_the_datamodules_seed(tmp_path):
    from lenet_lightning.lightning_cli import main as lightning_cli

    argv = ["--data.seed", "5", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    assert lightning_cli(argv, run=False).config["seed_everything"] == 5
    assert lightning_cli([*argv, "--seed_everything", "7"], run=False).config["seed_everything"] == 7


def test_lightning_cli_names_a_refused_value_by_its_parameter_path(capsys):
    from lenet_lightning.lightning_cli import main as lightning_cli

    with pytest.raises(SystemExit) as exited:
        lightning_cli(["fit", "--data.val_size", "0", "--trainer.logger", "false"])
    assert exited.value.code == 2
    assert "error: --data.val_size must be at least 1, got 0" in capsys.readouterr().err
