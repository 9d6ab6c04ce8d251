"""train.py end to end on synthetic data: what a user runs, checked from the files it leaves."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning import CIFAR10_CLASSES
from lenet_lightning.cli import build_parser, main, run
from lenet_lightning.settings import DATA_KEYS, MODEL_KEYS
from tests.conftest import synthetic_images

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--val-size", "100", "--batch-size", "32", "--seed", "3", "--log-every-n-steps", "5"]


def train_args(data_dir: Path, log_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--log-dir", str(log_dir), "--accelerator", "cpu", *SMALL, *extra]


def read_events(run_dir: Path) -> list[EventAccumulator]:
    """Every event file of a run, read back with TensorBoard's own reader (keeping all images)."""
    accumulators = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def scalar_tags(run_dir: Path) -> set[str]:
    return {tag for accumulator in read_events(run_dir) for tag in accumulator.Tags()["scalars"]}


def image_steps(run_dir: Path, tag: str) -> list[int]:
    return [
        image.step
        for accumulator in read_events(run_dir)
        if tag in accumulator.Tags()["images"]
        for image in accumulator.Images(tag)
    ]


@pytest.fixture(scope="module")
def trained_run(cifar_archive, tmp_path_factory):
    """One 3-epoch training run shared by the tests that only read its outputs."""
    log_dir = tmp_path_factory.mktemp("logs")
    metrics = main(train_args(cifar_archive, log_dir, "--max-epochs", "3"))
    return metrics, log_dir / "lenet" / "version_0"


def test_training_writes_the_run_folder(trained_run, capsys):
    metrics, run_dir = trained_run
    # Both settings files are plain YAML that any reader takes, and they agree.
    hparams, config = (yaml.safe_load((run_dir / name).read_text()) for name in ("hparams.yaml", "config.yaml"))
    assert hparams["class_names"] == list(CIFAR10_CLASSES)
    shared = (*MODEL_KEYS, *DATA_KEYS)  # Lightning's hparams.yaml holds the model's and the DataModule's
    assert {key: hparams[key] for key in shared} == {key: config[key] for key in shared}
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-") for name in checkpoints)
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(saved) == {"test/acc"} | {f"test/acc_{name}" for name in CIFAR10_CLASSES}
    assert saved == pytest.approx(metrics)
    assert all(isinstance(value, float) for value in saved.values())


def test_training_learns_the_synthetic_classes(trained_run):
    metrics, _ = trained_run
    assert metrics["test/acc"] > 0.5  # 10 classes: chance is 0.1


def test_event_files_hold_every_metric_tag(trained_run):
    _, run_dir = trained_run
    expected = {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "test/loss", "test/acc"}
    expected |= {f"{stage}/acc_{name}" for stage in ("val", "test") for name in CIFAR10_CLASSES}
    assert expected <= scalar_tags(run_dir)


def test_event_files_hold_pictures_per_validation_epoch(trained_run):
    _, run_dir = trained_run
    val_steps = image_steps(run_dir, "val/confusion_matrix")
    assert len(val_steps) == 3  # one per epoch, none from the sanity check
    assert image_steps(run_dir, "val/predictions") == val_steps
    assert len(image_steps(run_dir, "test/confusion_matrix")) == 1
    assert "train/lr" in scalar_tags(run_dir)


def test_event_files_hold_hparams_with_final_metrics(trained_run):
    metrics, run_dir = trained_run
    hparams = [a for a in read_events(run_dir) if has_hparams(a)]
    assert hparams, "no hparams entry"
    accumulator = hparams[-1]
    content = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in content and "_hparams_/session_start_info" in content
    experiment = content["_hparams_/experiment"].decode(errors="ignore")
    assert "hp/test_acc" in experiment and "hp/val_acc" in experiment
    start = content["_hparams_/session_start_info"].decode(errors="ignore")
    assert "recipe" in start and "lr" in start
    test_acc = [
        e.value for a in read_events(run_dir) if "hp/test_acc" in a.Tags()["scalars"] for e in a.Scalars("hp/test_acc")
    ]
    assert test_acc == [pytest.approx(metrics["test/acc"])]


def has_hparams(accumulator: EventAccumulator) -> bool:
    try:
        accumulator.PluginTagToContent("hparams")
    except KeyError:
        return False
    return True


def test_model_graph_is_logged(trained_run):
    _, run_dir = trained_run
    graphs = [accumulator.Graph() for accumulator in read_events(run_dir) if accumulator.Tags()["graph"]]
    assert graphs
    assert any("conv1" in node.name for node in graphs[0].node)


def test_evaluate_reproduces_the_training_test_accuracy_in_its_own_file(trained_run, cifar_archive, capsys):
    metrics, run_dir = trained_run
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    training_result = (run_dir / "test_metrics.json").read_text()
    evaluated = main(["--evaluate", "--ckpt-path", str(best)])
    assert evaluated == pytest.approx(metrics)
    # Named after the checkpoint and the data; the training run's own result is left as it was.
    [result] = run_dir.glob(f"eval_{best.stem}_{cifar_archive.name}_*_metrics.json")
    stem = result.name.removesuffix("_metrics.json")
    assert json.loads(result.read_text()) == pytest.approx(metrics)
    assert (run_dir / f"{stem}_confusion_matrix.png").stat().st_size > 1000
    assert (run_dir / "test_metrics.json").read_text() == training_result
    out = capsys.readouterr().out
    assert "overall" in out and "airplane" in out and f"{stem}_metrics.json" in out


def test_config_yaml_reruns_the_run_exactly(trained_run, cifar_archive, tmp_path):
    """``--config <run>/config.yaml`` repeats the run, same seed and all: bit-identical test_metrics.json (CPU)."""
    _, run_dir = trained_run
    again = main(["--config", str(run_dir / "config.yaml"), "--log-dir", str(tmp_path)])
    rerun_dir = tmp_path / "lenet" / "version_0"
    assert (rerun_dir / "test_metrics.json").read_bytes() == (run_dir / "test_metrics.json").read_bytes()
    assert again == trained_run[0]
    # The rerun's own config differs only in the flag given alongside.
    differing = {
        line
        for line in (rerun_dir / "config.yaml").read_text().splitlines()
        if line not in (run_dir / "config.yaml").read_text().splitlines()
    }
    assert differing == {f"log_dir: {tmp_path}"}


def test_print_config_shows_the_resolved_settings_and_trains_nothing(cifar_archive, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("recipe: tutorial\nlr: 0.002\n")
    settings = main(["--config", str(config), "--max-epochs", "2", "--log-dir", str(tmp_path), "--print-config"])
    printed = capsys.readouterr().out
    # Defaults < recipe < config file < flags.
    assert settings["batch_size"] == 4 and settings["lr"] == 0.002 and settings["max_epochs"] == 2
    assert "batch_size: 4\n" in printed and "lr: 0.002\n" in printed and "max_epochs: 2\n" in printed
    assert not (tmp_path / "lenet").exists()


def test_predict_classifies_readable_files_and_reports_the_rest(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    images, labels = synthetic_images(1, seed=5)
    png, jpg, bad = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"
    Image.fromarray(images[3].transpose(1, 2, 0)).resize((64, 64)).save(png)
    Image.fromarray(images[8].transpose(1, 2, 0)).convert("L").save(jpg)
    bad.write_text("not an image")
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert run(["--predict", str(png), str(jpg), str(bad), "--ckpt-path", ckpt, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(png), str(jpg), str(bad)]
    assert len(results[0]["top3"]) == 3 and results[0]["top3"][0]["class"] == CIFAR10_CLASSES[labels[3]]
    assert sum(c["probability"] for c in results[0]["top3"]) <= 1.0
    assert "top3" in results[1]
    assert "c.png" in results[2]["error"]
    assert run(["--predict", str(bad), "--ckpt-path", ckpt]) == 1


def test_help_documents_every_flag_with_its_default():
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or "") or action.default is False or action.dest == "predict", action.dest


def test_train_py_exits_non_zero_without_traceback_on_missing_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--accelerator", "gpu", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]


def test_two_runs_started_together_in_one_log_folder_each_get_their_own_folder(cifar_archive, tmp_path):
    flags = train_args(cifar_archive, tmp_path, "--max-epochs", "1")
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *flags, "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (tmp_path / "lenet").iterdir()) == ["version_0", "version_1"]
    folders = set()
    for (out, _), seed in zip(outputs, (1, 2), strict=True):
        run_dir = Path(out.split("run folder: ")[1].split()[0])
        folders.add(run_dir)
        # Each folder holds its own run: its settings, and the result that run printed.
        assert f"seed: {seed}\n" in (run_dir / "config.yaml").read_text()
        printed = float(out.split("overall")[1].split("%")[0])
        assert json.loads((run_dir / "test_metrics.json").read_text())["test/acc"] * 100 == pytest.approx(
            printed, abs=0.01
        )
    assert len(folders) == 2


def test_fast_dev_run_writes_nothing_and_bars_stay_off_stdout(cifar_archive, tmp_path, capsys):
    main(train_args(cifar_archive, tmp_path, "--fast-dev-run"))
    assert not (tmp_path / "lenet").exists()
    captured = capsys.readouterr()
    # Progress goes to stderr; stdout holds the results alone, for scripts and pipes.
    assert "Epoch 0" in captured.err and "Epoch" not in captured.out and "Testing" not in captured.out
    assert captured.out.splitlines()[0].startswith("class") and "overall" in captured.out


def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path, capsys):
    broken = tmp_path / "data"
    (broken / "train" / "cat").mkdir(parents=True)  # an image folder without images
    assert run(train_args(broken, tmp_path / "logs")) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # no run folder, no empty parent: the next run is version_0 again


def test_evaluate_and_predict_take_last_for_the_newest_runs_last_checkpoint(trained_run, tmp_path, capsys):
    _, run_dir = trained_run
    log_dir = str(run_dir.parents[1])
    assert run(["--evaluate", "--ckpt-path", "last", "--log-dir", log_dir]) == 0
    assert len(list(run_dir.glob("eval_last_*_metrics.json"))) == 1
    capsys.readouterr()
    image = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, seed=5)[0][3].transpose(1, 2, 0)).save(image)
    assert run(["--predict", str(image), "--ckpt-path", "last", "--log-dir", log_dir, "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["file"] == str(image) and len(result["top3"]) == 3
