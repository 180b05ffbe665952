"""End to end: `python inference.py` exactly as the container runs it, and amf.predict.run."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT, shared_data
from hostile import count_decodes
from make_fixtures import expected_model_dir, synthetic_crops, write_stack
from PIL import Image

import amf
from amf import manifest, predict, stacks, writing
from amf.errors import InputError

TOLERANCE = 1e-4  # absolute, on confidences, between machines and library builds


def run_inference(input_path: Path, output: Path, model: Path = FIXTURE_ENSEMBLE, *extra: str):
    command = [sys.executable, "inference.py", "--input", str(input_path), "--output", str(output)]
    command += ["--model", str(model), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_contract(output: Path, pages: int, threshold: float) -> list[dict]:
    """The MIDOG JSON: one object per page, exact keys, float confidence in [0, 1], class by threshold."""
    records = json.loads((output / writing.OUTPUT_NAME).read_text())
    assert isinstance(records, list) and len(records) == pages
    for record in records:
        assert set(record) == {"class", "confidence"}
        assert type(record["confidence"]) is float and not math.isnan(record["confidence"])
        assert 0.0 <= record["confidence"] <= 1.0
        assert record["class"] == ("atypical" if record["confidence"] >= threshold else "normal")
    return records


def test_sample_input_matches_expected_output(tmp_path: Path) -> None:
    model = expected_model_dir()
    result = run_inference(SAMPLE_INPUT, tmp_path, model)
    assert result.returncode == 0, result.stderr
    records = assert_contract(tmp_path, 6, manifest.load(model).threshold.value)
    expected = json.loads((ROOT / "test" / "expected_output.json").read_text())
    assert [r["class"] for r in records] == [e["class"] for e in expected]
    np.testing.assert_allclose(
        [r["confidence"] for r in records], [e["confidence"] for e in expected], atol=TOLERANCE
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [writing.OUTPUT_NAME]  # no CSV, no report
    assert "INFO amf.progress: classifying 6 crops" in result.stderr  # the log's progress lines


@pytest.mark.slow
def test_real_challenge_sample_end_to_end(tmp_path: Path) -> None:
    sample = shared_data("gc-sample", "input")
    result = run_inference(sample, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_contract(tmp_path, 16, manifest.load(FIXTURE_ENSEMBLE).threshold.value)
    alarming = [line for line in result.stderr.splitlines() if not line.startswith("INFO ")]
    assert alarming == []


def test_folder_of_mixed_crops_writes_csv(tmp_path: Path) -> None:
    crops = synthetic_crops(4, np.random.default_rng(1))
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(crops[0]).save(folder / "a.png")
    Image.fromarray(crops[1]).convert("L").save(folder / "b_gray.png")
    Image.fromarray(crops[2]).convert("RGBA").save(folder / "sub" / "c_rgba.png")
    Image.fromarray(crops[3]).resize((90, 70)).save(folder / "sub" / "d_odd.jpg")
    write_stack(folder / "e_stack.tif", crops[:2])
    (folder / "notes.txt").write_text("ignored")
    count = predict.run(folder, tmp_path / "out", FIXTURE_ENSEMBLE, batch_size=3)
    assert count == 6
    records = assert_contract(tmp_path / "out", 6, 0.5)
    with open(tmp_path / "out" / writing.CSV_NAME) as handle:
        rows = list(csv.DictReader(handle))
    names = ["a.png", "b_gray.png", "e_stack.tif#0", "e_stack.tif#1", "sub/c_rgba.png", "sub/d_odd.jpg"]
    assert [row["file"] for row in rows] == names
    assert [float(row["p_atypical"]) for row in rows] == [r["confidence"] for r in records]
    # the same pixels give the same answer whichever file and batch they came in
    assert records[0]["confidence"] == pytest.approx(records[2]["confidence"], abs=1e-6)
    thumbnails = report_thumbnails(tmp_path / "out" / writing.REPORT_NAME)
    assert sorted(thumbnails) == sorted(names)
    # each card shows its own page: the gray crop gray, each other crop nearer itself than another
    gray = np.asarray(thumbnails["b_gray.png"], dtype=int)
    assert np.abs(gray - gray[..., :1]).max() <= 6

    def distance(name: str, crop: np.ndarray) -> float:
        small = Image.fromarray(crop).resize((96, 96), Image.Resampling.BILINEAR)
        return float(np.abs(np.asarray(thumbnails[name], dtype=int) - np.asarray(small, dtype=int)).mean())

    assert distance("a.png", crops[0]) < distance("a.png", crops[2])
    assert distance("sub/c_rgba.png", crops[2]) < distance("sub/c_rgba.png", crops[0])


def report_thumbnails(path: Path) -> dict[str, Image.Image]:
    """report.html's thumbnails by the name on their card."""
    found = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="([^"]+)">', path.read_text())
    return {html.unescape(name): Image.open(io.BytesIO(base64.b64decode(data))) for data, name in found}


def test_single_stack_file_with_many_pages(tmp_path: Path) -> None:
    """20 pages in batches of 8: every page's answer, in page order, is the ensemble's on it."""
    from amf.ensemble import Ensemble
    from amf.preprocess import prepare

    stack = tmp_path / "big.tiff"
    pages = synthetic_crops(20, np.random.default_rng(2))
    write_stack(stack, pages)
    assert predict.run(stack, tmp_path / "out", FIXTURE_ENSEMBLE, batch_size=8) == 20
    records = assert_contract(tmp_path / "out", 20, 0.5)
    assert (tmp_path / "out" / writing.CSV_NAME).read_text().count("big.tiff#") == 20
    ensemble_manifest = manifest.load(FIXTURE_ENSEMBLE)
    expected = Ensemble.load(ensemble_manifest, FIXTURE_ENSEMBLE).predict(
        prepare(list(pages), ensemble_manifest.input)
    )
    np.testing.assert_allclose([r["confidence"] for r in records], expected, atol=1e-6)


def test_8_bit_pages_are_decoded_once_and_bad_values_are_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages no value check can fail (8- and 16-bit unsigned) are decoded once, as they are
    classified; float pages are checked in a pass before the model loads, so a NaN last page
    costs one decode pass, not a model load and a classification, and leaves nothing behind."""
    decoded = count_decodes(monkeypatch)
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(60)]
    pages[0].save(tmp_path / "fine.tif", save_all=True, append_images=pages[1:])
    assert predict.run(tmp_path / "fine.tif", tmp_path / "out", FIXTURE_ENSEMBLE) == 60
    assert len(decoded) == len(set(decoded)) == 60
    (tmp_path / "out" / "notes.txt").write_text("the user's own file")
    decoded.clear()
    good, bad = (Image.fromarray(np.full((8, 8), value, np.float32)) for value in (0.5, np.nan))
    good.save(tmp_path / "bad.tif", save_all=True, append_images=[good] * 58 + [bad])
    monkeypatch.setattr(predict, "load_predictor", lambda *_: pytest.fail("the ensemble was loaded"))
    with pytest.raises(InputError, match=r"bad\.tif page 59: page contains NaN"):
        predict.run(tmp_path / "bad.tif", tmp_path / "out", FIXTURE_ENSEMBLE)
    assert len(decoded) == len(set(decoded)) == 60
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_one_page_stack(tmp_path: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(SAMPLE_INPUT, root)
    stack = next((root / "images" / stacks.SLUG).iterdir())
    write_stack(stack, synthetic_crops(1, np.random.default_rng(3)))
    assert predict.run(root, tmp_path / "out", FIXTURE_ENSEMBLE) == 1
    assert_contract(tmp_path / "out", 1, 0.5)


def broken_inputs(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (input, model, expected message) for each error the container must report."""
    good = tmp_path / "good"
    shutil.copytree(SAMPLE_INPUT, good)
    cases: dict[str, tuple[Path, Path, str]] = {}

    def variant(name: str, change) -> Path:
        root = tmp_path / name
        shutil.copytree(SAMPLE_INPUT, root)
        change(root, root / "images" / stacks.SLUG)
        return root

    cases["no inputs.json"] = (
        variant("a", lambda r, f: (r / "inputs.json").unlink()),
        FIXTURE_ENSEMBLE,
        "inputs.json: missing",
    )
    cases["slug"] = (
        variant("b", lambda r, f: (r / "inputs.json").write_text('[{"interface": {"slug": "wrong"}}]')),
        FIXTURE_ENSEMBLE,
        "no input with slug",
    )
    cases["several"] = (
        variant("c", lambda r, f: shutil.copy(next(f.iterdir()), f / "second.tif")),
        FIXTURE_ENSEMBLE,
        "several stack files",
    )
    cases["corrupt"] = (
        variant("d", lambda r, f: next(f.iterdir()).write_bytes(b"garbage")),
        FIXTURE_ENSEMBLE,
        "stack_fixture.tiff: cannot read image",
    )
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", FIXTURE_ENSEMBLE, "no crops found")
    cases["no manifest"] = (good, tmp_path / "empty", "no ensemble manifest here")
    missing = Path(shutil.copytree(FIXTURE_ENSEMBLE, tmp_path / "m1"))
    (missing / "fold2.safetensors").unlink()
    cases["missing weights"] = (good, missing, "fold2.safetensors: fold weight file listed")
    wrong = Path(shutil.copytree(FIXTURE_ENSEMBLE, tmp_path / "m2"))
    data = json.loads((wrong / "manifest.json").read_text()) | {"architecture": "test_resnet"}
    (wrong / "manifest.json").write_text(json.dumps(data))
    cases["wrong architecture"] = (good, wrong, "fold0.safetensors: weights do not fit")
    return cases


@pytest.mark.slow
def test_every_broken_input_fails_cleanly(tmp_path: Path) -> None:
    """One line naming the file and the problem, exit 2, nothing in the output folder."""
    for name, (input_path, model, message) in broken_inputs(tmp_path).items():
        output = tmp_path / f"out-{name.replace(' ', '_')}"
        output.mkdir()
        result = run_inference(input_path, output, model)
        assert result.returncode == 2, (name, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and message in errors[0], (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        assert list(output.iterdir()) == [], name


def test_default_model_dir_prefers_mounted_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict, "GRAND_CHALLENGE_MODEL_DIR", tmp_path)
    assert predict.default_model_dir() == predict.BAKED_MODEL_DIR
    shutil.copy(FIXTURE_ENSEMBLE / "manifest.json", tmp_path / "manifest.json")
    assert predict.default_model_dir() == tmp_path


def test_non_finite_ensemble_output_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amf import ensemble

    monkeypatch.setattr(ensemble.Ensemble, "predict", lambda self, batch: np.full(len(batch), np.nan))
    with pytest.raises(predict.ModelError, match="non-finite"):
        predict.run(SAMPLE_INPUT, tmp_path / "out", FIXTURE_ENSEMBLE)
    assert not (tmp_path / "out").exists()


def test_predict_crops_averages_the_tta_views(fixture_ensemble):
    from amf.ensemble import Ensemble
    from amf.errors import InputError
    from amf.preprocess import dihedral, prepare

    ensemble_manifest = manifest.load(fixture_ensemble)
    ensemble = Ensemble.load(ensemble_manifest, fixture_ensemble)
    crops = list(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    plain = predict.predict_crops(ensemble, crops, ensemble_manifest.input, batch_size=2)
    np.testing.assert_allclose(plain, ensemble.predict(prepare(crops, ensemble_manifest.input)))
    flips = predict.predict_crops(ensemble, crops, ensemble_manifest.input, tta="flips")
    views = [
        ensemble.predict(prepare([dihedral(c, k) for c in crops], ensemble_manifest.input))
        for k in (0, 2, 4, 6)
    ]
    np.testing.assert_allclose(flips, np.mean(views, axis=0))
    with pytest.raises(InputError, match="none"):
        predict.predict_crops(ensemble, crops, ensemble_manifest.input, tta="all")


def _training_modules() -> set[str]:
    """The modules amf/__init__.py's module map lists under "Training"."""
    section = amf.__doc__.split("\nTraining")[1].split("\n\n")[0]
    return {f"amf.{name}" for name in re.findall(r"^    (\w+) ", section, flags=re.M)}


def test_inference_imports_no_training_module(tmp_path: Path) -> None:
    assert {"amf.config", "amf.dataset", "amf.models", "amf.train"} <= _training_modules()
    code = (
        "import runpy, sys\n"
        "sys.argv = ['inference.py', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_path('inference.py', run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    print('exit', end.code)\n"
        "print(*sorted(name for name in sys.modules if name.startswith('amf.')))\n"
    )
    argv = ["--input", str(SAMPLE_INPUT), "--output", str(tmp_path), "--model", str(ROOT / "model")]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    status, loaded = result.stdout.splitlines()
    assert status == "exit 0", result.stderr
    assert "amf.onnx_runtime" in loaded.split() and (tmp_path / writing.OUTPUT_NAME).is_file()
    assert set(loaded.split()) & _training_modules() == set()
