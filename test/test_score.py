"""The official evaluator reproduced: layouts, strict output checks, metrics against scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from amf import score, stacks, writing
from amf.__main__ import main
from amf.errors import InputError

TRUTH = [
    {
        "image": "stack_1.tiff",
        "labels": ["normal", "atypical", "normal", "atypical"],
        "tumordomains": [1, 1, 1, 1],
    },
    {"image": "stack_2.tiff", "labels": ["normal", "normal", "atypical"], "tumordomains": [2, 2, 2]},
]
P_ATYPICAL = {"stack_1.tiff": [0.1, 0.8, 0.6, 0.4], "stack_2.tiff": [0.2, 0.7, 0.9]}


def _write(folder, outputs, threshold=0.5):
    """Our own layout: <stem>/multiple-mitotic-figure-classification.json per stack."""
    for image, probs in outputs.items():
        writing.write_predictions(
            folder / image.split(".")[0], writing.predictions(np.array(probs), threshold), None
        )


@pytest.fixture
def truth(tmp_path):
    path = tmp_path / "ground_truth.json"
    path.write_text(json.dumps(TRUTH))
    return path


def test_metrics_match_scikit_learn(tmp_path, truth):
    _write(tmp_path / "out", P_ATYPICAL)
    result = score.score(tmp_path / "out", truth)
    labels = np.array([0, 1, 0, 1, 0, 0, 1])
    probs = np.array(P_ATYPICAL["stack_1.tiff"] + P_ATYPICAL["stack_2.tiff"])
    assert result["overall_roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert result["overall_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probs >= 0.5))
    assert result["overall_sensitivity"] == pytest.approx(recall_score(labels, probs >= 0.5))
    assert result["domain_2"]["specificity"] == 0.5 and result["domain_2"]["roc_auc"] == 1.0
    overall = ("sensitivity", "specificity", "balanced_accuracy", "roc_auc", "accuracy")
    assert set(result) == {f"overall_{m}" for m in overall} | {"domain_1", "domain_2"}


def test_winning_class_confidence_reading(tmp_path, truth):
    _write(tmp_path / "out", P_ATYPICAL)
    as_is = score.score(tmp_path / "out", truth)
    flipped = score.score(tmp_path / "out", truth, confidence="winning-class")
    assert flipped["overall_balanced_accuracy"] == as_is["overall_balanced_accuracy"]
    assert flipped["overall_roc_auc"] != as_is["overall_roc_auc"]


def test_grand_challenge_layout(tmp_path, truth):
    jobs = []
    for k, (image, probs) in enumerate(P_ATYPICAL.items()):
        writing.write_predictions(
            tmp_path / f"job{k}" / "output", writing.predictions(np.array(probs), 0.5), None
        )
        jobs.append(
            {
                "pk": f"job{k}",
                "inputs": [{"image": {"name": image}, "interface": {"slug": stacks.SLUG}}],
                "outputs": [
                    {
                        "interface": {
                            "slug": "multiple-mitotic-figure-classification",
                            "relative_path": writing.OUTPUT_NAME,
                        }
                    }
                ],
            }
        )
    (tmp_path / "predictions.json").write_text(json.dumps(jobs))
    _write(tmp_path / "ours", P_ATYPICAL)
    assert score.score(tmp_path, truth) == score.score(tmp_path / "ours", truth)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"class": "atypical", "confidence": 1}, "finite float"),
        ({"class": "mitosis", "confidence": 0.5}, "normal or atypical"),
        ({"confidence": 0.5}, "normal or atypical"),
    ],
)
def test_malformed_outputs_fail_like_the_evaluator(tmp_path, truth, record, message):
    _write(tmp_path, P_ATYPICAL)
    records = json.loads((tmp_path / "stack_2" / writing.OUTPUT_NAME).read_text())
    (tmp_path / "stack_2" / writing.OUTPUT_NAME).write_text(json.dumps(records[:2] + [record]))
    with pytest.raises(InputError, match=message):
        score.score(tmp_path, truth)


def test_wrong_length_missing_outputs_and_cli(tmp_path, truth, capsys, caplog):
    _write(tmp_path, {"stack_1.tiff": [0.1, 0.9]})
    with pytest.raises(InputError, match="expected a list of 4 results, got 2"):
        score.score(tmp_path, truth)
    _write(tmp_path, {"stack_1.tiff": P_ATYPICAL["stack_1.tiff"]})
    assert (
        main(
            [
                "score",
                "--predictions",
                str(tmp_path),
                "--ground-truth",
                str(truth),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert "1 ground-truth images have no output" in caplog.text
    assert json.loads((tmp_path / "m.json").read_text())["overall_roc_auc"] == 0.75
    assert main(["score", "--predictions", str(tmp_path / "none"), "--ground-truth", str(truth)]) == 2


def test_score_csv_matches_aggregate_and_refuses_partial_runs(tmp_path: Path) -> None:
    from amf.dataset import Sample, save_table

    samples = [
        Sample(
            id=f"s{i}",
            image=f"/data/{i}.png",
            label=i % 2,
            cancer_type="breast" if i < 4 else "lung",
            slide=f"slide{i}",
            scanner="XR",
            species="human",
            source="test",
        )
        for i in range(8)
    ]
    table = save_table(samples, tmp_path / "table.csv")
    scores = [0.1, 0.8, 0.3, 0.4, 0.2, 0.9, 0.6, 0.7]
    lines = ["file,p_atypical,class"] + [
        f"sub/{i}.png,{p},{'atypical' if p >= 0.5 else 'normal'}" for i, p in enumerate(scores)
    ]
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    result = score.score_csv(tmp_path / "predictions.csv", table)
    expected = score.aggregate(
        np.array([s.label for s in samples]),
        np.array([int(p >= 0.5) for p in scores]),
        np.array(scores),
        np.array([s.cancer_type for s in samples]),
    )
    assert result == expected
    (tmp_path / "predictions.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match=r"1 samples without a row \(e.g. \['7.png'\]\)"):
        score.score_csv(tmp_path / "predictions.csv", table)


@pytest.mark.parametrize("command", ["score", "evaluate", "dataset"])
def test_unknown_grouping_column_is_a_usage_error(command: str, capsys: pytest.CaptureFixture) -> None:
    from amf.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--by", "colour"])
    assert stop.value.code == 2 and "argument --by: invalid choice: 'colour'" in capsys.readouterr().err
