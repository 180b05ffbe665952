"""The official MIDOG 2025 Track 2 evaluator, reproduced: output JSONs + ground truth -> metrics.

Ground truth is the organisers' format: `[{"image": "stack_1.tiff", "labels": ["normal", ...],
"tumordomains": [1, ...]}, ...]`. Outputs are found either through grand-challenge's
`predictions.json` (job pk -> input image name; output at `<pk>/output/<relative_path>`) or, for
a folder of our own runs, at `<stack name or stem>/multiple-mitotic-figure-classification.json`
or `<stem>.json`.

As the evaluator: each output must hold one dict per crop with `class` in {normal, atypical}
and a float `confidence`; the predicted class comes from `class`; sensitivity, specificity,
balanced accuracy, accuracy and ROC AUC pooled over all crops and per tumour domain.

The score behind ROC AUC: `--confidence p-atypical` (the output contract, docs/input-output.md) uses
`confidence` as is; `winning-class` uses `confidence if class == atypical else 1 - confidence`,
which is what the stored version of the organisers' evaluate.py computes.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, recall_score

from amf.errors import InputError
from amf.metrics import auroc
from amf.stacks import SLUG
from amf.writing import OUTPUT_NAME

log = logging.getLogger(__name__)

CLASSES = {"normal": 0, "atypical": 1}
CONFIDENCE = ("p-atypical", "winning-class")


def score(predictions: Path, ground_truth: Path, *, confidence: str = "p-atypical") -> dict[str, Any]:
    """Metrics over every output found under `predictions` that has ground truth.

    Raises:
        InputError: unreadable ground truth, an output without ground truth, or a malformed
            output (the evaluator fails the whole submission for one).
    """
    if confidence not in CONFIDENCE:
        raise InputError(f"confidence must be one of {CONFIDENCE}, got {confidence!r}")
    truth = load_ground_truth(ground_truth)
    outputs = find_outputs(Path(predictions), truth)
    if not outputs:
        raise InputError(f"{predictions}: no outputs found for any of the {len(truth)} ground-truth images")
    missing = sorted(set(truth) - set(outputs))
    if missing:
        log.warning(
            "%d ground-truth images have no output and are not scored, e.g. %s", len(missing), missing[:3]
        )
    labels, predicted, scores, domains = [], [], [], []
    for image, path in sorted(outputs.items()):
        classes, values = read_output(path, len(truth[image][0]), confidence=confidence)
        labels += truth[image][0]
        domains += truth[image][1]
        predicted += classes
        scores += values
    return aggregate(np.array(labels), np.array(predicted), np.array(scores), np.array(domains))


def score_csv(predictions: Path, table: Path, *, by: str = "cancer_type") -> dict[str, Any]:
    """The evaluator's metrics for a `predictions.csv` of a folder run, labels from a dataset table.

    Rows are matched to the table's samples by crop file name; every sample needs exactly one row,
    so a partial run cannot be scored by accident.
    """
    from amf.dataset import load_table

    samples = {Path(s.image).name: s for s in load_table(table)}
    try:
        with open(predictions, newline="") as handle:
            rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
        unknown = sorted(set(rows) - set(samples))
        missing = sorted(set(samples) - set(rows))
        if unknown or missing:
            raise InputError(
                f"{predictions}: {len(unknown)} rows not in {table} (e.g. {unknown[:3]}), "
                f"{len(missing)} samples without a row (e.g. {missing[:3]})"
            )
        names = sorted(samples)
        predicted = np.array([CLASSES[rows[n]["class"]] for n in names])
        scores = np.array([float(rows[n]["p_atypical"]) for n in names])
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{predictions}: not a predictions.csv ({type(error).__name__}: {error})") from None
    labels = np.array([samples[n].label for n in names])
    domains = np.array([getattr(samples[n], by) for n in names])
    return aggregate(labels, predicted, scores, domains)


def aggregate(
    labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray, domains: np.ndarray
) -> dict[str, Any]:
    """The evaluator's `aggregates`: overall metrics, then one entry per tumour domain."""
    tp, fn = int(np.sum((predicted == 1) & (labels == 1))), int(np.sum((predicted == 0) & (labels == 1)))
    tn, fp = int(np.sum((predicted == 0) & (labels == 0))), int(np.sum((predicted == 1) & (labels == 0)))
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    result: dict[str, Any] = {
        "overall_sensitivity": sensitivity,
        "overall_specificity": specificity,
        "overall_balanced_accuracy": (sensitivity + specificity) / 2,
        "overall_roc_auc": auroc(labels, scores),
        "overall_accuracy": (tp + tn) / labels.size,
    }
    for domain in np.unique(domains):
        mask = domains == domain
        sens = recall_score(labels[mask], predicted[mask], zero_division=0.0)
        spec = recall_score(labels[mask], predicted[mask], pos_label=0, zero_division=0.0)
        result[f"domain_{domain}"] = {
            "sensitivity": float(sens),
            "specificity": float(spec),
            "balanced_accuracy": float((sens + spec) / 2),
            "accuracy": float(accuracy_score(labels[mask], predicted[mask])),
            "roc_auc": auroc(labels[mask], scores[mask]),
        }
    return result


def load_ground_truth(path: Path) -> dict[str, tuple[list[int], list[Any]]]:
    """image name -> (labels 0/1, tumour domains), one entry per crop."""
    try:
        entries = json.loads(Path(path).read_text())
        truth = {
            e["image"]: ([CLASSES[label] for label in e["labels"]], list(e["tumordomains"])) for e in entries
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a MIDOG ground-truth file ({type(error).__name__}: {error})") from None
    uneven = [name for name, (labels, domains) in truth.items() if len(labels) != len(domains)]
    if uneven:
        raise InputError(f"{path}: labels and tumordomains differ in length for {uneven[:3]}")
    return truth


def find_outputs(folder: Path, truth: dict[str, Any]) -> dict[str, Path]:
    """image name -> its output JSON, via predictions.json if present, else by file name."""
    if (folder / "predictions.json").is_file():
        return _from_predictions_json(folder)
    found = {}
    for image in truth:
        stem = image.split(".")[0]
        candidates = [folder / image / OUTPUT_NAME, folder / stem / OUTPUT_NAME, folder / f"{stem}.json"]
        existing = [p for p in candidates if p.is_file()]
        if existing:
            found[image] = existing[0]
    return found


def _from_predictions_json(folder: Path) -> dict[str, Path]:
    path = folder / "predictions.json"
    try:
        jobs = json.loads(path.read_text())
        found = {}
        for job in jobs:
            image = next(v["image"]["name"] for v in job["inputs"] if v["interface"]["slug"] == SLUG)
            output = next(v for v in job["outputs"] if v["interface"]["slug"] == Path(OUTPUT_NAME).stem)
            found[image] = folder / job["pk"] / "output" / output["interface"]["relative_path"]
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as error:
        raise InputError(
            f"{path}: not a grand-challenge predictions file ({type(error).__name__}: {error})"
        ) from None
    return found


def read_output(path: Path, expected: int, *, confidence: str) -> tuple[list[int], list[float]]:
    """Classes and scores of one output file, checked as strictly as the evaluator does."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable output ({error})") from None
    if not isinstance(records, list) or len(records) != expected:
        got = len(records) if isinstance(records, list) else type(records).__name__
        raise InputError(f"{path}: expected a list of {expected} results, got {got}")
    classes, scores = [], []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or record.get("class") not in CLASSES:
            raise InputError(f"{path}[{i}]: needs 'class' normal or atypical, got {record!r}")
        value = record.get("confidence")
        if not isinstance(value, float) or not np.isfinite(value):
            raise InputError(f"{path}[{i}]: 'confidence' must be a finite float, got {value!r}")
        classes.append(CLASSES[record["class"]])
        winning = confidence == "winning-class" and record["class"] == "normal"
        scores.append(1.0 - value if winning else value)
    return classes, scores
