"""amf.distill and distillation through `amf train --teacher`: a student of fold k learns only from
the teacher members that never saw fold k, the teacher's scores are what the container serves,
and a refit on every crop is served with the threshold of its cross-validation run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic_data import TINY

from amf import distill, manifest, runs
from amf.ensemble import Ensemble
from amf.errors import InputError, ModelError
from amf.plan import load_plan
from amf.predict import predict_crops
from amf.train import RESULT, VAL_PREDICTIONS
from amf.training_data import load_crops
from amf.writing import read_rows, sha256_of

# `lodo` (conftest, once per session): a plan of 2 domains x 2 folds and a finished run of it.


@pytest.fixture
def teacher(lodo, tmp_path: Path) -> Path:
    """Domain beta of the session's run, assembled into its own folder: a 2-member teacher."""
    run = Path(shutil.copytree(lodo[0] / "run", tmp_path / "teacher-run"))
    runs.assemble(run, "beta", tmp_path / "teacher")
    return tmp_path / "teacher"


def _table(
    lodo, teacher: Path, cache: Path | None, views=distill.ALL_VIEWS, held_out_only: bool = False
) -> tuple[distill.TeacherTable, dict]:
    root, plan_path, samples = lodo
    plan = load_plan(plan_path)
    crops = load_crops(samples)
    table = distill.teacher_table(
        [teacher], plan, sha256_of(plan_path), "beta", crops, cache, views, held_out_only=held_out_only
    )
    return table, crops


def test_teacher_scores_are_the_members_as_served_under_each_view(lodo, teacher, tmp_path):
    table, crops = _table(lodo, teacher, tmp_path / "scores")
    ensemble_manifest = manifest.load(teacher)
    assert table.scores.shape == (2, len(distill.ALL_VIEWS), len(table.ids))
    assert table.held_out == (0, 1) == tuple(ensemble_manifest.provenance["held_out_folds"])
    member = Ensemble.load(dataclasses.replace(ensemble_manifest, folds=ensemble_manifest.folds[1:]), teacher)
    served = predict_crops(member, [crops[i] for i in table.ids], ensemble_manifest.input, tta="dihedral")
    np.testing.assert_allclose(table.scores[1].mean(axis=0), served, atol=1e-6)
    assert not np.allclose(table.scores[1, 0], table.scores[1, 5])  # the views differ
    cached = sorted((tmp_path / "scores").iterdir())  # one file per member, named by its sha256
    assert [p.stem for p in cached] == sorted(fold.sha256 for fold in ensemble_manifest.folds)
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert _table(lodo, teacher, tmp_path / "scores")[0].scores.tobytes() == table.scores.tobytes()
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read back, not scored again
    assert _table(lodo, teacher, tmp_path / "scores", views=(0,))[0].scores.shape[1] == 1
    assert [p.stat().st_mtime_ns for p in cached] != stamps  # other views: scored again


def test_a_fold_learns_from_the_members_that_held_it_out(lodo, teacher, tmp_path):
    table, _ = _table(lodo, teacher, tmp_path / "scores")
    plan = load_plan(lodo[1])
    train_ids, _ = plan.split("beta", 0)
    targets = table.targets(train_ids, 0)
    column = {i: c for c, i in enumerate(table.ids)}
    expected = table.scores[0].mean(axis=0)  # member 0 held out fold 0: it trained on these crops
    assert targets == {i: pytest.approx(float(expected[column[i]])) for i in train_ids}
    refit = table.targets(table.ids, None)
    assert refit[table.ids[0]] == pytest.approx(float(table.scores[:, :, 0].mean()))


def test_out_of_fold_scores_are_each_folds_own_validation_predictions(lodo, teacher, tmp_path):
    table, _ = _table(lodo, teacher, tmp_path / "scores")
    plan = load_plan(lodo[1])
    fold_of = {i: k for k, ids in enumerate(plan.domains["beta"].folds) for i in ids}
    oof = dict(zip(table.ids, table.out_of_fold(fold_of, [0, 1], [0]), strict=True))
    for k in (0, 1):  # training scored each fold's validation crops through view 0
        for row in read_rows(lodo[0] / "run" / "beta" / f"fold{k}" / VAL_PREDICTIONS):
            assert oof[row["id"]] == pytest.approx(float(row["p_atypical"]), abs=1e-6)


@pytest.mark.parametrize("cached", [False, True])
def test_held_out_only_scores_each_members_held_out_crops_and_out_of_fold_is_the_same(
    lodo, teacher, tmp_path, cached
):
    full, _ = _table(lodo, teacher, tmp_path / "scores")
    cache = tmp_path / "held-out-scores" if cached else None
    held, _ = _table(lodo, teacher, cache, held_out_only=True)
    if cached:  # kept apart from the full tables, read back the next time
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            p.stem + "-held-out.npz" for p in (tmp_path / "scores").iterdir()
        )
        stamps = [p.stat().st_mtime_ns for p in sorted(cache.iterdir())]
        assert _table(lodo, teacher, cache, held_out_only=True)[0].scores.tobytes() == held.scores.tobytes()
        assert [p.stat().st_mtime_ns for p in sorted(cache.iterdir())] == stamps  # not scored again
    plan = load_plan(lodo[1])
    fold_of = {i: k for k, ids in enumerate(plan.domains["beta"].folds) for i in ids}
    scored = np.array([[fold_of[i] == k for i in held.ids] for k in held.held_out])
    assert (held.scores != 0).any(axis=1).tolist() == scored.tolist()  # nothing else scored
    for views in ([0], distill.ALL_VIEWS):
        np.testing.assert_allclose(
            held.out_of_fold(fold_of, [0, 1], views), full.out_of_fold(fold_of, [0, 1], views), atol=1e-7
        )


def test_student_run_trains_on_the_teachers_targets_under_its_served_views(
    lodo, teacher, tmp_path, monkeypatch
):
    manifest.save(dataclasses.replace(manifest.load(teacher), tta="mirror"), teacher)
    seen = []
    train = runs.train

    def spy(train_samples, *args, teacher=None, **kwargs):
        seen.append(teacher)
        return train(train_samples, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr(runs, "train", spy)
    config = dataclasses.replace(TINY, teacher=(str(teacher),), teacher_weight=0.5)
    runs.run_plan(lodo[1], tmp_path / "student", config, domain="beta")
    cache = tmp_path / "student" / "beta" / runs.TEACHER_SCORES
    stamps = [p.stat().st_mtime_ns for p in sorted(cache.iterdir())]
    table, _ = _table(lodo, teacher, cache, views=(0, 4))
    assert [p.stat().st_mtime_ns for p in sorted(cache.iterdir())] == stamps  # the run's own table
    assert table.views == distill.served_views([teacher]) == (0, 4)  # the crop and its mirror
    plan = load_plan(lodo[1])
    for k, targets in enumerate(seen):
        assert targets == table.targets(plan.split("beta", k)[0], k)
    student = manifest.load(tmp_path / "student" / "beta")
    assert student.provenance["training"][0]["teacher"] == [
        {"folder": "teacher", "file": "manifest.json", "sha256": sha256_of(teacher / "manifest.json")}
    ]


def test_a_teacher_of_another_plan_is_refused(lodo, teacher, tmp_path):
    other = tmp_path / "other-plan.json"
    other.write_bytes(lodo[1].read_bytes() + b"\n")
    config = dataclasses.replace(TINY, teacher=(str(teacher),))
    with pytest.raises(InputError, match="assembled on another plan"):
        runs.run_plan(other, tmp_path / "student", config, domain="beta")
    assert not (tmp_path / "student").exists()


def test_a_teacher_must_fit_the_plans_folds(teacher):
    odd = dataclasses.replace(manifest.load(teacher), provenance={})
    assert distill.member_folds(odd, 2) == (0, 1)
    with pytest.raises(ModelError, match="2 members does not fit a 3-fold plan"):
        distill.member_folds(odd, 3)


def test_a_refit_neither_teaches_nor_is_scored_out_of_fold(teacher):
    refit = dataclasses.replace(manifest.load(teacher), provenance={"refit": {}, "held_out_folds": [0, 1]})
    with pytest.raises(ModelError, match="refit on every crop and held no fold out"):
        distill.member_folds(refit, 2)


def test_refit_is_served_with_the_threshold_of_its_folds(lodo, tmp_path):
    cv = Path(shutil.copytree(lodo[0] / "run", tmp_path / "cv"))
    runs.run_plan(lodo[1], tmp_path / "refit", TINY, domain="beta", refit=True)
    folder = tmp_path / "refit" / "beta" / "refit"
    assert (folder / RESULT).is_file() and not (folder / VAL_PREDICTIONS).exists()
    assert manifest.load(folder).threshold.method.startswith("none: trained on every crop")
    served = runs.assemble(cv, "beta", tmp_path / "model", refit=tmp_path / "refit")
    folds = runs.assemble(cv, "beta")
    assert [f.file for f in served.folds] == ["refit.safetensors"]
    assert served.threshold == folds.threshold
    assert served.provenance["out_of_fold"] == folds.provenance["out_of_fold"]
    assert served.provenance["refit"]["n_train"] == len(read_rows(cv / "beta" / runs.OOF_PREDICTIONS))
    with pytest.raises(InputError, match="no --fold or --index"):
        runs.run_plan(lodo[1], tmp_path / "refit", TINY, fold=0, refit=True)


def test_a_refit_started_from_the_same_imported_weights_is_the_same_recipe(tmp_path):
    """Each run imports its `.tflite` into its own folder: the same tensors and metadata, in
    whatever key order, are the same start."""
    from safetensors.numpy import save_file

    metadata = {"source": "x.tflite", "calibration": "512 crops"}
    tensor = {"w": np.arange(4, dtype=np.float16)}
    save_file(tensor, tmp_path / "a.safetensors", metadata=metadata)
    save_file({"w": tensor["w"] + 1}, tmp_path / "c.safetensors", metadata=metadata)
    data = (tmp_path / "a.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(reversed(header["__metadata__"].items()))  # as another run wrote it
    text = json.dumps(header).encode()
    (tmp_path / "b.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    folds, refit, other = (
        dataclasses.replace(TINY, pretrained=str(tmp_path / f"{n}.safetensors")) for n in "abc"
    )
    assert runs.recipe_differences(folds, refit) == {}
    assert set(runs.recipe_differences(folds, other)) == {"pretrained"}
    assert set(runs.recipe_differences(folds, dataclasses.replace(refit, epochs=9))) == {"epochs"}


def test_a_refit_of_another_recipe_is_refused(lodo, tmp_path):
    cv = Path(shutil.copytree(lodo[0] / "run", tmp_path / "cv"))
    runs.run_plan(lodo[1], tmp_path / "refit", dataclasses.replace(TINY, epochs=1), domain="beta", refit=True)
    with pytest.raises(InputError, match="not the refit of .*epochs"):
        runs.assemble(cv, "beta", tmp_path / "model", refit=tmp_path / "refit")
