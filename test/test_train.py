"""Training one model: sampling, augmentation seeding, outputs the container loads, determinism, resume."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from synthetic_data import TINY, make_samples, make_table

from amf import manifest, plan, train, training_data, writing
from amf.ensemble import Ensemble
from amf.errors import InputError
from amf.preprocess import prepare


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("crops"), domains=("alpha",))


def _split(samples):
    return samples[:24], samples[24:]


def test_trained_folder_is_an_ensemble_the_container_loads(samples, tmp_path):
    train_samples, val_samples = _split(samples)
    result = train.train(train_samples, val_samples, TINY, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "weights.safetensors", "manifest.json", "metrics.csv", "val_predictions.csv", "result.json"
    }  # fmt: skip
    ensemble_manifest = manifest.load(tmp_path)
    assert ensemble_manifest.architecture == "test_efficientnet" and ensemble_manifest.input.size == 32
    assert ensemble_manifest.provenance["config"] == {**dataclasses.asdict(TINY), "teacher": []}
    rows = writing.read_rows(tmp_path / train.VAL_PREDICTIONS)
    assert [r["id"] for r in rows] == [s.id for s in val_samples]
    crops = training_data.load_crops(val_samples)
    served = Ensemble.load(ensemble_manifest, tmp_path).predict(
        prepare([crops[s.id] for s in val_samples], ensemble_manifest.input)
    )
    np.testing.assert_allclose([float(r["p_atypical"]) for r in rows], served, rtol=1e-6)
    assert len(writing.read_rows(tmp_path / train.METRICS)) == TINY.epochs
    assert result["validation"]["roc_auc"] > 0.5 and result["n_train"] == 24
    assert train.train(train_samples, val_samples, TINY, tmp_path) == result  # finished: not retrained


def test_killed_run_resumes_to_the_same_model(samples, tmp_path, monkeypatch):
    train_samples, val_samples = _split(samples)
    config = dataclasses.replace(TINY, epochs=3, stain=0.1, soft_labels=True)
    train.train(train_samples, val_samples, config, tmp_path / "whole")
    write_rows = writing.write_rows

    def killed_after_first_epoch(path, rows):  # metrics.csv is written last at the end of an epoch
        write_rows(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(writing, "write_rows", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(train_samples, val_samples, config, tmp_path / "killed")
    assert (tmp_path / "killed" / train.LAST).is_file() and not (tmp_path / "killed" / train.RESULT).exists()
    monkeypatch.undo()
    with pytest.raises(InputError, match="other settings.*'lr'"):
        train.train(train_samples, val_samples, dataclasses.replace(config, lr=1e-3), tmp_path / "killed")
    train.train(train_samples, val_samples, dataclasses.replace(config, workers=1), tmp_path / "killed")
    for name in ("weights.safetensors", "val_predictions.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()
    losses = [
        [r["val_auroc"] for r in writing.read_rows(tmp_path / run / train.METRICS)]
        for run in ("whole", "killed")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert not (tmp_path / "killed" / train.LAST).exists()


def test_a_network_that_does_not_learn_is_reported(samples, tmp_path, caplog):
    """A first epoch no better than always answering 50 % gets a warning naming the folder."""
    frozen = dataclasses.replace(TINY, epochs=1, lr=1e-12)
    with caplog.at_level(logging.WARNING):
        train.train(*_split(samples), frozen, tmp_path / "frozen")
    assert "frozen: after the first epoch the training loss" in caplog.text
    assert "the network is not learning" in caplog.text
    (row,) = writing.read_rows(tmp_path / "frozen" / train.METRICS)
    assert float(row["train_loss"]) >= 0.98 * float(row["chance_loss"])


def test_an_epoch_smaller_than_a_batch_is_refused(samples, tmp_path):
    with pytest.raises(InputError, match="smaller than one batch"):
        train.train(*_split(samples), dataclasses.replace(TINY, epoch_size=4), tmp_path)


@pytest.mark.slow
def test_torchrun_trains_data_parallel_on_cpu(tmp_path):
    """Two gloo processes on the CPU: one model, written once, loadable like any other."""
    table, samples = make_table(tmp_path, domains=("alpha",))
    plan_path = plan.save_plan(
        plan.make_plan(samples, table=table, domain_column=None, n_folds=2), tmp_path / "p.json"
    )
    tiny = [
        "--arch",
        TINY.architecture,
        "--size",
        "32",
        "--epochs",
        "1",
        "--epoch-size",
        "32",
        "--batch-size",
        "8",
        "--pretrained",
        "none",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "amf", "train"]
    command += [
        "--plan",
        str(plan_path),
        "--out",
        str(tmp_path / "run"),
        "--fold",
        "0",
        "--workers",
        "0",
        *tiny,
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("validation AUROC") == 1  # only rank 0 reports
    assert manifest.load(tmp_path / "run" / "all" / "fold0").architecture == TINY.architecture


def test_teacher_targets_are_mixed_with_the_labels_by_the_teacher_weight(samples):
    train_samples, _ = _split(samples)
    crops = training_data.load_crops(train_samples)
    teacher = {s.id: 0.25 for s in train_samples}
    config = dataclasses.replace(TINY, soft_labels=True, teacher=("unused",), teacher_weight=0.75)
    runtime = train.start_runtime()
    spec = train.models.default_input_spec(config.architecture, config.size)
    loader = train._loader(train_samples, crops, spec, config, runtime, teacher)
    expected = [0.75 * 0.25 + 0.25 * s.soft_label for s in train_samples]
    np.testing.assert_allclose(loader.dataset.targets, expected, rtol=1e-6)
    plain = train._loader(train_samples, crops, spec, config, runtime, None)
    np.testing.assert_allclose(plain.dataset.targets, [s.soft_label for s in train_samples], rtol=1e-6)
