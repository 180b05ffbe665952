"""Running a plan: selection, skipping finished models, missing images, assembling the container's folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from synthetic_data import TINY

from amf import manifest, plan, predict, runs
from amf.config import TrainConfig
from amf.ensemble import Ensemble
from amf.errors import InputError, ModelError
from amf.metrics import youden_threshold
from amf.preprocess import prepare
from amf.train import RESULT, VAL_PREDICTIONS
from amf.writing import read_rows

# `lodo` (conftest, once per session): a leave-one-domain-out plan (2 domains x 2 folds) and a
# finished run of it, shared with test_evaluate.py; a test that changes the run copies it.


def _copy_run(lodo, tmp_path):
    return Path(shutil.copytree(lodo[0] / "run", tmp_path / "run"))


def test_finished_run_is_a_set_of_ensembles(lodo):
    root, plan_path, _ = lodo
    for domain in ("alpha", "beta"):
        assembled = manifest.load(root / "run" / domain)
        assert [f.file for f in assembled.folds] == ["fold0/weights.safetensors", "fold1/weights.safetensors"]
    assert runs.run_plan(plan_path, root / "run", TINY) == []


def test_rerun_trains_only_unfinished_models(lodo, tmp_path, caplog):
    run = _copy_run(lodo, tmp_path)
    (run / "alpha" / "fold0" / RESULT).unlink()
    (run / "alpha" / "manifest.json").unlink()
    finished = (run / "alpha" / "fold1" / RESULT).read_bytes()
    with caplog.at_level(logging.INFO):
        assert len(runs.run_plan(lodo[1], run, TINY, domain="alpha")) == 1
    assert "2 models selected, 1 finished already, 1 to train" in caplog.text
    assert (run / "alpha" / "fold1" / RESULT).read_bytes() == finished
    assert manifest.load(run / "alpha").folds[0].file == "fold0/weights.safetensors"


def test_assembled_folder_serves_with_the_oof_threshold(lodo, tmp_path):
    root, _, _ = lodo
    run = _copy_run(lodo, tmp_path)  # assembling rewrites the run's own manifest
    target = tmp_path / "model"
    assembled = runs.assemble(run, "beta", target)
    assert sorted(p.name for p in target.iterdir()) == [
        "fold0.safetensors",
        "fold1.safetensors",
        "manifest.json",
    ]
    oof = read_rows(run / "beta" / runs.OOF_PREDICTIONS)
    labels = np.array([int(r["label"]) for r in oof])
    scores = np.array([float(r["p_atypical"]) for r in oof])
    assert assembled.threshold.value == youden_threshold(labels, scores)
    assert (
        assembled.threshold.method == f"youden on {len(oof)} out-of-fold predictions, test-time views: none"
    )
    assert assembled.tta == "none"
    assert assembled.provenance["training"][0]["architecture"] == TINY.architecture
    assert str(tmp_path.parents[1]) not in json.dumps(assembled.to_dict())  # no machine's paths
    assert manifest.load(target) == assembled
    in_run = manifest.load(run / "beta")  # the run folder follows its latest assembly
    assert (in_run.threshold, in_run.tta) == (assembled.threshold, assembled.tta)
    crops = root / "crops" / "alpha"
    assert predict.run(crops, tmp_path / "out", target) == len(list(crops.iterdir()))
    assert runs.assemble(run, "beta", tmp_path / "otsu", method="otsu").threshold.method.startswith("otsu")
    with pytest.raises(InputError, match="must be one of"):
        runs.assemble(run, "beta", tmp_path / "bad", method="median")


def test_assembling_with_test_time_views_rescores_each_fold_as_served(lodo, tmp_path):
    """The threshold of a TTA ensemble is chosen on out-of-fold scores made through the same views."""
    run = _copy_run(lodo, tmp_path)
    plain = read_rows(run / "beta" / runs.OOF_PREDICTIONS)
    assembled = runs.assemble(run, "beta", tta="flips")
    assert assembled == manifest.load(run / "beta") and assembled.tta == "flips"
    assert assembled.threshold.method.endswith("test-time views: flips")
    rows = read_rows(run / "beta" / runs.OOF_PREDICTIONS)
    assert [r["id"] for r in rows] == [r["id"] for r in plain]
    fold_dir = run / "beta" / "fold1"
    fold = manifest.load(fold_dir)
    ids = [r["id"] for r in read_rows(fold_dir / VAL_PREDICTIONS)]
    samples = runs.plan_samples(runs.load_run(run)[0])
    crops = prepare([np.asarray(Image.open(samples[i].image).convert("RGB")) for i in ids], fold.input)
    served = predict.predict_views(Ensemble.load(fold, fold_dir), crops, "flips")
    rescored = {r["id"]: float(r["p_atypical"]) for r in rows}
    np.testing.assert_allclose([rescored[i] for i in ids], served, rtol=1e-6)
    scores = np.array([float(r["p_atypical"]) for r in rows])
    assert not np.allclose(scores, [float(r["p_atypical"]) for r in plain])
    assert assembled.threshold.value == youden_threshold(np.array([int(r["label"]) for r in rows]), scores)


def test_changing_the_views_of_an_assembled_folder_is_assembling_with_them(lodo, tmp_path):
    """`amf views` gives, from the folder alone, the threshold and out-of-fold figures that
    assembling the runs with those views gives; only the manifest changes."""
    _, plan_path, _ = lodo
    run = _copy_run(lodo, tmp_path)
    target = tmp_path / "model"
    plain = runs.assemble(run, "beta", target)
    with_flips = runs.assemble(run, "beta", tmp_path / "flips", tta="flips")
    weights = {p.name: p.read_bytes() for p in target.glob("*.safetensors")}
    changed = runs.change_views(target, plan_path, "flips")
    assert changed == manifest.load(target) and changed.tta == "flips"
    assert changed.threshold.method == with_flips.threshold.method != plain.threshold.method
    assert changed.threshold.value == pytest.approx(with_flips.threshold.value, abs=1e-6)
    for figure in ("roc_auc", "balanced_accuracy", "tp", "fp"):
        expected = with_flips.provenance["out_of_fold"][figure]
        assert changed.provenance["out_of_fold"][figure] == pytest.approx(expected, abs=1e-6)
    assert dataclasses.replace(changed, tta="none", threshold=plain.threshold, provenance={}) == (
        dataclasses.replace(plain, provenance={})
    )
    assert weights == {p.name: p.read_bytes() for p in target.glob("*.safetensors")}


def test_mixing_assembled_folders_serves_their_members_as_one(lodo, tmp_path):
    """`amf mix`: every member of each folder, the threshold and out-of-fold figures chosen again
    for the views served (two folders of the same members: those of either, with those views)."""
    root, plan_path, _ = lodo
    run = _copy_run(lodo, tmp_path)
    with_flips = runs.assemble(run, "beta", tmp_path / "flips", tta="flips")
    runs.assemble(run, "beta", tmp_path / "plain")
    target = tmp_path / "new" / "mixed"
    mixed = runs.mix([tmp_path / "flips", tmp_path / "plain"], plan_path, target, tta="flips")
    assert mixed == manifest.load(target) and mixed.tta == "flips"
    assert [f.sha256 for f in mixed.folds] == [f.sha256 for f in with_flips.folds] * 2
    assert mixed.provenance["held_out_folds"] == [0, 1, 0, 1]
    assert mixed.threshold.value == pytest.approx(with_flips.threshold.value, abs=1e-6)
    for figure in ("roc_auc", "balanced_accuracy", "tp", "fp"):
        expected = with_flips.provenance["out_of_fold"][figure]
        assert mixed.provenance["out_of_fold"][figure] == pytest.approx(expected, abs=1e-6)
    crops = root / "crops" / "alpha"
    predict.run(crops, tmp_path / "out-mixed", target)
    predict.run(crops, tmp_path / "out-flips", tmp_path / "flips")
    served = [read_rows(tmp_path / out / "predictions.csv") for out in ("out-mixed", "out-flips")]
    assert [float(r["p_atypical"]) for r in served[0]] == pytest.approx(
        [float(r["p_atypical"]) for r in served[1]], abs=1e-6
    )


def test_a_mix_that_cannot_be_made_names_why_and_leaves_nothing(lodo, tmp_path, monkeypatch):
    _, plan_path, _ = lodo
    run = _copy_run(lodo, tmp_path)
    good = tmp_path / "good"
    runs.assemble(run, "beta", good)
    wider = Path(shutil.copytree(good, tmp_path / "wider"))
    served = manifest.load(wider)
    manifest.save(dataclasses.replace(served, input=dataclasses.replace(served.input, size=40)), wider)
    other_plan = Path(shutil.copytree(good, tmp_path / "other-plan"))
    provenance = {**served.provenance, "plan": {"file": "other.json", "sha256": "0" * 64}}
    manifest.save(dataclasses.replace(served, provenance=provenance), other_plan)
    with pytest.raises(ModelError, match="expect different inputs"):
        runs.mix([good, wider], plan_path, tmp_path / "mixed", tta="none")
    with pytest.raises(InputError, match="assembled on another plan"):
        runs.mix([good, other_plan], plan_path, tmp_path / "mixed", tta="none")
    with pytest.raises(InputError, match="exists"):
        runs.mix([good, good], plan_path, wider, tta="none")
    monkeypatch.setattr(runs, "change_views", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        runs.mix([good, good], plan_path, tmp_path / "mixed", tta="none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "other-plan", "run", "wider"]


@pytest.mark.slow
def test_runs_of_two_architectures_make_one_mixed_ensemble(lodo, tmp_path):
    """Both runs' folds serve together; each crop's OOF score is the mean of its two fold models."""
    root, plan_path, _ = lodo
    byobnet = dataclasses.replace(TINY, architecture="test_byobnet")
    runs.run_plan(plan_path, tmp_path / "byobnet", byobnet, domain="beta")
    target = tmp_path / "mixed"
    assembled = runs.assemble([root / "run", tmp_path / "byobnet"], "beta", target)
    assert assembled.architectures == (TINY.architecture, "test_byobnet")
    assert [assembled.architecture_of(f) for f in assembled.folds] == [TINY.architecture] * 2 + [
        "test_byobnet"
    ] * 2
    assert assembled.name == "test_efficientnet+test_byobnet-32px-4fold-beta"
    assert [r["architecture"] for r in assembled.provenance["training"]] == [
        TINY.architecture,
        "test_byobnet",
    ]
    first = {r["id"]: float(r["p_atypical"]) for r in read_rows(root / "run" / "beta" / runs.OOF_PREDICTIONS)}
    second = {
        r["id"]: float(r["p_atypical"])
        for r in read_rows(tmp_path / "byobnet" / "beta" / runs.OOF_PREDICTIONS)
    }
    mixed = np.array([(first[i] + second[i]) / 2 for i in first])
    labels = np.array([int(r["label"]) for r in read_rows(root / "run" / "beta" / runs.OOF_PREDICTIONS)])
    assert assembled.threshold.value == youden_threshold(labels, mixed)
    served = manifest.load(target)
    assert served == assembled
    crops = root / "crops" / "alpha"
    assert predict.run(crops, tmp_path / "out", target) == len(list(crops.iterdir()))
    wider = dataclasses.replace(TINY, size=40)
    runs.run_plan(plan_path, tmp_path / "wider", wider, domain="beta")
    with pytest.raises(ModelError, match="the folds expect different inputs"):
        runs.assemble([root / "run", tmp_path / "wider"], "beta", tmp_path / "refused")
    with pytest.raises(InputError, match="needs a target folder"):
        runs.assemble([root / "run", tmp_path / "byobnet"], "beta")
    assert not (tmp_path / "refused").exists()
    one = runs.assemble(_copy_run(lodo, tmp_path), "beta", tmp_path / "one")
    runs.assemble(tmp_path / "byobnet", "beta", tmp_path / "two")
    mixed = runs.mix([tmp_path / "one", tmp_path / "two"], plan_path, tmp_path / "mix", tta="none")
    assert [f.sha256 for f in mixed.folds] == [f.sha256 for f in assembled.folds]  # the same members
    assert mixed.threshold.value == pytest.approx(assembled.threshold.value, abs=1e-6) != one.threshold.value
    for figure in ("roc_auc", "balanced_accuracy", "tp", "fp"):
        expected = assembled.provenance["out_of_fold"][figure]
        assert mixed.provenance["out_of_fold"][figure] == pytest.approx(expected, abs=1e-6)


def test_runs_that_resize_differently_mix_once_one_interpolation_is_chosen(lodo, tmp_path):
    root, plan_path, _ = lodo
    other = Path(shutil.copytree(root / "run", tmp_path / "bilinear"))
    for k in (0, 1):  # as if trained with a network whose config resizes bilinearly
        fold = manifest.load(other / "beta" / f"fold{k}")
        bilinear = dataclasses.replace(fold.input, interpolation="bilinear")
        manifest.save(dataclasses.replace(fold, input=bilinear), other / "beta" / f"fold{k}")
    with pytest.raises(ModelError, match="differ only in how crops of another size are resized: choose one"):
        runs.assemble([root / "run", other], "beta", tmp_path / "refused")
    mixed = runs.assemble([root / "run", other], "beta", tmp_path / "mixed", interpolation="bilinear")
    assert mixed.input.interpolation == "bilinear" and len(mixed.folds) == 4


def test_selection_and_settings_errors(lodo):
    root, plan_path, _ = lodo
    the_plan = plan.load_plan(plan_path)
    assert runs.select_tasks(the_plan, index=3) == [("beta", 1)]
    assert runs.select_tasks(the_plan, domain="beta", fold=0) == [("beta", 0)]
    with pytest.raises(InputError, match=r"choose from \['alpha', 'beta'\]"):
        runs.select_tasks(the_plan, domain="gamma")
    with pytest.raises(InputError, match="outside the plan's 0..3"):
        runs.select_tasks(the_plan, index=4)
    with pytest.raises(InputError, match="other settings"):
        runs.run_plan(plan_path, root / "run", dataclasses.replace(TINY, epochs=5))


def test_missing_images_are_excluded_or_fatal(lodo, tmp_path, caplog):
    root, plan_path, samples = lodo
    moved = tmp_path / "moved.png"
    shutil.move(samples[0].image, moved)
    try:
        with pytest.raises(InputError, match="1 of .* image files missing"):
            runs.run_plan(plan_path, tmp_path / "strict", TINY, index=2, strict=True)
        with caplog.at_level(logging.WARNING):
            runs.run_plan(plan_path, tmp_path / "lenient", TINY, domain="beta", fold=0)
        assert "image files missing" in caplog.text
        rows = read_rows(tmp_path / "lenient" / "beta" / "fold0" / "val_predictions.csv")
        assert samples[0].id not in {r["id"] for r in rows}
    finally:
        shutil.move(moved, samples[0].image)


def test_unfinished_domain_and_changed_table_are_refused(lodo, tmp_path):
    root, plan_path, _ = lodo
    run = _copy_run(lodo, tmp_path)
    (run / "beta" / "fold1" / RESULT).unlink()
    with pytest.raises(ModelError, match="unfinished folds"):
        runs.assemble(run, "beta")
    changed = json.loads(plan_path.read_text()) | {"table_sha256": "0" * 64}
    (tmp_path / "plan.json").write_text(json.dumps(changed))
    with pytest.raises(InputError, match="changed since the plan was made"):
        runs.run_plan(tmp_path / "plan.json", tmp_path / "other", TINY)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[" * 50_000,
        '{"plan": 3, "config": {}}',
        '{"plan": "p.json", "config": {"colour": 1}}',
        "[]",
    ],
)
def test_malformed_run_record_is_one_input_error(tmp_path: Path, text: str) -> None:
    (tmp_path / runs.RUN_FILE).write_text(text)
    with pytest.raises(InputError, match=r"run\.json: malformed run record"):
        runs.load_run(tmp_path)


def test_settings_given_then_the_run_folders_then_built_in(lodo, tmp_path):
    root, _, _ = lodo
    resumed = runs.settings(root / "run", {"epochs": None, "workers": 3})
    assert resumed == dataclasses.replace(TINY, workers=3)  # the run's recipe, one setting changed
    fresh = runs.settings(tmp_path / "new", {"architecture": "test_byobnet", "pretrained": "none"})
    assert fresh.architecture == "test_byobnet" and fresh.pretrained is None
    assert fresh.epochs == TrainConfig().epochs and TrainConfig().pretrained == "hub"


@pytest.mark.slow
def test_offline_hub_default_fails_at_once_naming_the_way_out(lodo, tmp_path):
    """A new run pretrains from the hub by default; offline it stops before any work, saying what to use."""
    command = [sys.executable, "-m", "amf", "train", "--plan", str(lodo[1]), "--out", str(tmp_path / "run")]
    command += ["--arch", "efficientvit_m0"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "cannot get timm's pretrained weights for 'efficientvit_m0'" in result.stderr
    assert "--pretrained FILE (see `amf import-tflite`) or --pretrained none" in result.stderr
    assert not (tmp_path / "run").exists()  # so the advised --pretrained none can use the folder


def test_assemble_refuses_weights_changed_since_training(lodo, tmp_path):
    run = _copy_run(lodo, tmp_path)
    weights = run / "beta" / "fold1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match=r"fold1/weights\.safetensors: sha256 differs"):
        runs.assemble(run, "beta")
