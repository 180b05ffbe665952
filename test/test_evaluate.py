"""Evaluating runs: Table 2, figures and metrics from held-out domains or out-of-fold predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image
from synthetic_data import TINY, make_table

from amf import evaluate, manifest, plan, runs
from amf.__main__ import main
from amf.metrics import binary_metrics, otsu_threshold
from amf.writing import read_rows


def _run(root, domain_column):
    table, samples = make_table(root)
    the_plan = plan.make_plan(samples, table=table, domain_column=domain_column, n_folds=2)
    plan_path = plan.save_plan(the_plan, root / "plan.json")
    runs.run_plan(plan_path, root / "run", TINY)
    return root / "run"


# `lodo_run` (conftest, once per session): the finished leave-one-domain-out run that
# test_runs.py shares; read-only here.


def test_held_out_domains_report(lodo_run, tmp_path):
    before = {path: path.read_bytes() for path in lodo_run.rglob("*") if path.is_file()}
    report = evaluate.evaluate(lodo_run, tmp_path, tta="flips")
    assert {path: path.read_bytes() for path in lodo_run.rglob("*") if path.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.png", "metrics.json", "predictions.csv", "roc.png", "table2.md"
    ]  # fmt: skip
    assert list(report["domains"]) == ["alpha", "beta", evaluate.POOLED]
    assert report["tta"] == ["flips"] and manifest.load(lodo_run / "beta").tta == "none"
    rows = read_rows(tmp_path / "predictions.csv")
    alpha = [r for r in rows if r["domain"] == "alpha"]
    labels = np.array([int(r["label"]) for r in alpha])
    scores = np.array([float(r["p_atypical"]) for r in alpha])
    assert float(alpha[0]["threshold_otsu"]) == otsu_threshold(scores)
    expected = binary_metrics(labels, scores, threshold=otsu_threshold(scores))
    assert report["domains"]["alpha"]["otsu"] == pytest.approx(expected, nan_ok=True)
    fixed = runs.domain_manifest(lodo_run, "alpha", tta="flips")[0].threshold.value
    assert report["domains"]["alpha"]["fixed"]["threshold"] == fixed
    assert report["domains"][evaluate.POOLED]["otsu"]["n"] == len(rows) == 72
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["domains"]["Pooled"]["otsu"]["threshold"] is None
    )
    table = (tmp_path / "table2.md").read_text()
    assert table.startswith("Test-time views: flips")
    assert "| alpha | 36 | 12 |" in table and "| Pooled | 72 | 24 |" in table
    for figure in ("roc.png", "confusion.png"):
        with Image.open(tmp_path / figure) as image:
            assert image.size[0] > 500


def test_all_domains_run_reports_out_of_fold_metrics(tmp_path_factory, tmp_path):
    run = _run(tmp_path_factory.mktemp("all"), None)
    report = evaluate.evaluate(run, tmp_path, by="scanner")
    assert list(report["domains"]) == ["scanner-a", "scanner-b", evaluate.POOLED]
    assert report["evaluated"] == "out-of-fold predictions by scanner"
    assert report["domains"][evaluate.POOLED]["otsu"]["n"] == 72


@pytest.mark.slow
def test_real_amibr_pipeline_from_the_command_line(tmp_path, capsys):
    """dataset -> plan -> train -> evaluate -> assemble on real crops, tiny settings (CPU, ~1 min)."""
    table, plan_file, run, report = (tmp_path / name for name in ("t.csv", "plan.json", "run", "report"))
    amibr = shared_data("ami-br")
    assert (
        main(
            [
                "dataset",
                "--amibr",
                str(amibr),
                "--amibr-split",
                "test",
                "--by",
                "scanner",
                "--out",
                str(table),
            ]
        )
        == 0
    )
    assert "| Total | 826 | 184 | 642 |" in capsys.readouterr().out
    assert (
        main(["plan", "--table", str(table), "--domain", "scanner", "--folds", "2", "--out", str(plan_file)])
        == 0
    )
    tiny = [
        "--arch",
        "test_efficientnet",
        "--size",
        "32",
        "--epochs",
        "1",
        "--epoch-size",
        "64",
        "--workers",
        "0",
        "--pretrained",
        "none",
    ]
    assert main(["train", "--plan", str(plan_file), "--out", str(run), *tiny]) == 0
    assert main(["evaluate", "--run", str(run), "--out", str(report), "--tta", "flips"]) == 0
    printed = capsys.readouterr().out
    for domain in ("Aperio CS2", "Hamamatsu S360", "Hamamatsu XR", "TUPAC16", "Pooled"):
        assert f"| {domain} |" in printed
    assert (report / "roc.png").is_file() and (report / "confusion.png").is_file()
    assert main(["assemble", "--run", str(run), "--domain", "tupac16", "--out", str(tmp_path / "model")]) == 0
    assert "out-of-fold AUROC" in capsys.readouterr().out
