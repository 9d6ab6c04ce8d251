"""``--predict`` on folders: recursion, batches, unreadable files, CSV and JSON results, throughput, no Lightning."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from lenet_lightning import CIFAR10_CLASSES
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.cli import main, run
from lenet_lightning.inference import classifier_from_checkpoint
from lenet_lightning.predict import OUTPUT_FIELDS, image_files, predict_files, predict_paths, report, write_results
from tests.conftest import ROOT, synthetic_images


@pytest.fixture(scope="session")
def checkpoint(small_checkpoint):
    return str(small_checkpoint)


@pytest.fixture
def photos(tmp_path):
    """30 images in nested class folders (some not 32x32), a broken .png and a text file."""
    images, labels = synthetic_images(3, seed=7)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "photos" / ("deep" if index % 2 else "") / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image.transpose(1, 2, 0))
        (picture.resize((48, 40)) if index % 3 == 0 else picture).save(folder / f"{index:03d}.png")
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, not listed")
    return tmp_path / "photos"


def truth(path: str) -> str:
    return Path(path).parent.name


def test_folders_are_searched_recursively_for_images(photos):
    files = image_files([photos])
    assert len(files) == 31 and files == sorted(files)
    assert photos / "broken.png" in files and photos / "notes.txt" not in files


def test_csv_has_exact_columns_an_error_row_and_every_other_file(checkpoint, photos, tmp_path, capsys):
    output = tmp_path / "results.csv"
    # Batches of 256 hold all 31 files: the broken one shares a batch with the good ones.
    assert run(["--predict", str(photos), "--ckpt-path", checkpoint, "--output", str(output)]) == 0
    with output.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == OUTPUT_FIELDS == ("file", "class", "probability", "top3", "error")
    assert len(rows) == 31
    broken = [row for row in rows if row["error"]]
    assert [Path(row["file"]).name for row in broken] == ["broken.png"]
    assert broken[0]["class"] == broken[0]["top3"] == "" and "broken.png" in broken[0]["error"]
    good = [row for row in rows if not row["error"]]
    accuracy = sum(row["class"] == truth(row["file"]) for row in good) / len(good)
    assert accuracy > 0.3  # chance is 0.1; a third of the files are resized, which blurs their stripes
    top3 = [entry.split(":") for entry in good[0]["top3"].split(";")]
    assert len(top3) == 3 and top3[0] == [good[0]["class"], good[0]["probability"]]
    captured = capsys.readouterr()
    assert "images/s" in captured.err.splitlines()[-1] and "broken.png: error:" in captured.err
    assert f"wrote 31 predictions to {output}" in captured.out


def test_json_holds_the_same_fields(checkpoint, photos, tmp_path):
    output = tmp_path / "results.json"
    results = main(["--predict", str(photos), "--ckpt-path", checkpoint, "--output", str(output)])["predictions"]
    saved = json.loads(output.read_text())
    assert [tuple(entry) for entry in saved] == [OUTPUT_FIELDS] * 31
    assert [entry["file"] for entry in saved] == [result["file"] for result in results]
    good = next(entry for entry in saved if entry["error"] is None)
    assert good["class"] == good["top3"][0]["class"] and good["probability"] == good["top3"][0]["probability"]
    broken = next(entry for entry in saved if entry["error"] is not None)
    assert broken["class"] is None and broken["top3"] is None


def test_results_do_not_depend_on_the_batch_size(checkpoint, photos):
    model, class_names = classifier_from_checkpoint(load_checkpoint(Path(checkpoint)))
    files = image_files([photos])
    small, whole = (predict_files(model, class_names, files, batch_size) for batch_size in (4, 256))
    assert [(r["file"], r.get("class"), r.get("error")) for r in small] == [
        (r["file"], r.get("class"), r.get("error")) for r in whole
    ]
    assert [r.get("probability", 0) for r in small] == pytest.approx([r.get("probability", 0) for r in whole], abs=2e-4)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--output", "results.txt"], "name a .csv or .json file"),
        (["--output", "missing-folder/results.csv"], "writable --output"),
    ],
)
def test_bad_output_gets_one_line(flags, message, checkpoint, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["--predict", str(photos), "--ckpt-path", checkpoint, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and err.splitlines()[-1].startswith("error: ")


def test_folder_without_images_gets_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(["--predict", str(tmp_path / "empty"), "--ckpt-path", checkpoint]) == 2
    assert "no .png or .jpg images under folder" in capsys.readouterr().err


def test_a_checkpoint_without_class_names_predicts_cifar10_names(small_checkpoint, tmp_path):
    """Checkpoints of earlier releases stored no class names: they are CIFAR-10's, the DataModule's."""
    checkpoint = torch.load(small_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = None
    checkpoint["hyper_parameters"].pop("num_classes", None)
    torch.save(checkpoint, tmp_path / "older.ckpt")
    image = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, seed=5)[0][3].transpose(1, 2, 0)).save(image)
    [result] = predict_paths(tmp_path / "older.ckpt", [image])
    assert result["class"] in CIFAR10_CLASSES


def test_prediction_and_inference_import_neither_lightning_nor_torchmetrics():
    code = (
        "import sys, lenet_lightning.predict, lenet_lightning.inference, lenet_lightning.checkpoints\n"
        "heavy = {'lightning', 'pytorch_lightning', 'torchmetrics'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m == 'lenet_lightning.settings'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


class NonFiniteModel(nn.Module):
    """Probabilities with NaN for the first image and infinity for the second."""

    def forward(self, images):
        probabilities = torch.full((len(images), len(CIFAR10_CLASSES)), 0.1)
        probabilities[0] = float("nan")
        probabilities[1, 4] = float("inf")
        return probabilities


def test_results_never_hold_nan_or_infinity(photos, tmp_path, capsys):
    results = predict_files(NonFiniteModel(), CIFAR10_CLASSES, image_files([photos])[:3])
    write_results(results, tmp_path / "results.json")
    write_results(results, tmp_path / "results.csv")
    report(results, print_all=True, as_json=True)
    printed = capsys.readouterr().out
    for text in (printed, (tmp_path / "results.json").read_text()):
        saved = json.loads(text, parse_constant=pytest.fail)  # NaN, Infinity: not JSON
        assert saved[0]["probability"] is None and saved[1]["probability"] is None
        assert saved[2]["probability"] == 0.1
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    numbers = " ".join(row["probability"] + row["top3"] for row in rows).lower()  # file names may say "nan"
    assert "nan" not in numbers and "inf" not in numbers
    assert rows[0]["probability"] == rows[1]["probability"] == "" and rows[2]["probability"] == "0.1"
    assert rows[0]["top3"].split(";")[0] == f"{rows[0]['class']}:"  # the class, no number
