"""Evaluating a run: the paper's Table 2, Figure 1 (ROC curves) and Figure 2 (confusion matrices).

Leave-one-domain-out run: each held-out domain is scored by the mean P(atypical) of its fold
models through `amf.ensemble.Ensemble` (with its manifest's test-time views), thresholded by
Otsu's method on those scores (label-free, as the paper does) and by the ensemble manifest's own
out-of-fold threshold (what the container would use). All-domains run: the out-of-fold
predictions, grouped by a table column, stand in for held-out domains.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amf import manifest, writing
from amf.dataset import check_images
from amf.ensemble import Ensemble
from amf.metrics import binary_metrics, json_safe, otsu_threshold
from amf.plan import Plan
from amf.predict import predict_crops
from amf.runs import OOF_PREDICTIONS, domain_manifest, ensemble_dir, load_run, plan_samples
from amf.training_data import load_crops

log = logging.getLogger(__name__)

POOLED = "Pooled"
THRESHOLDS = {"otsu": "Otsu on the domain's scores", "fixed": "the ensemble manifest's (out-of-fold)"}


@dataclass(frozen=True)
class DomainScores:
    """One domain's labels and ensemble scores, with both thresholds."""

    name: str
    ids: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray
    thresholds: dict[str, float | np.ndarray]  # one value, or one per crop when pooled


def evaluate(
    run_dir: Path, out_dir: Path, *, tta: str | None = None, by: str = "cancer_type", batch_size: int = 64
) -> dict[str, Any]:
    """Score every domain of a run; write table2.md, metrics.json, roc.png, confusion.png, predictions.csv.

    `tta` scores each domain's ensemble with those test-time views; None keeps what the run's
    ensembles were assembled with (none for ensembles not yet assembled). The run folder is only
    read: an ensemble with other views is assembled in memory.
    """
    plan, _ = load_run(run_dir)
    assembled = {name: _domain_manifest(run_dir, name, tta) for name in plan.domains}
    if any(split.test for split in plan.domains.values()):
        domains = [_held_out_scores(plan, name, *assembled[name][:2], batch_size) for name in plan.domains]
    else:
        domains = _out_of_fold(plan, *assembled[next(iter(plan.domains))], by)
    report = {
        "run": str(Path(run_dir).resolve()),
        "evaluated": "held-out domains" if plan.domain_column else f"out-of-fold predictions by {by}",
        "tta": sorted({m.tta for _, m, _ in assembled.values()}),
        "thresholds": THRESHOLDS,
        "domains": {d.name: _metrics(d.labels, d.scores, d.thresholds) for d in domains},
    }
    pooled = _pooled(domains)
    report["domains"][POOLED] = _metrics(pooled.labels, pooled.scores, pooled.thresholds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writing.write_text_atomic(out_dir / "table2.md", format_table(report) + "\n")
    writing.write_json_atomic(out_dir / "metrics.json", json_safe(report))
    writing.write_rows(out_dir / "predictions.csv", _prediction_rows(domains))
    plot_roc([*domains, pooled], out_dir / "roc.png")
    plot_confusion([*domains, pooled], out_dir / "confusion.png")
    log.info("report -> %s", out_dir)
    return report


def _domain_manifest(
    run_dir: Path, domain: str, tta: str | None
) -> tuple[Path, manifest.Manifest, list[dict[str, str]]]:
    """The domain's fold ensemble in the run folder and its out-of-fold rows: as assembled, or
    assembled again in memory when missing or served with other views."""
    folder = ensemble_dir(run_dir, domain)
    if (folder / manifest.MANIFEST_NAME).is_file() and (folder / OOF_PREDICTIONS).is_file():
        ensemble_manifest = manifest.load(folder)
        if tta in (None, ensemble_manifest.tta):
            return folder, ensemble_manifest, writing.read_rows(folder / OOF_PREDICTIONS)
    ensemble_manifest, rows = domain_manifest(run_dir, domain, tta=tta or "none")
    return folder, ensemble_manifest, rows


def _held_out_scores(
    plan: Plan, domain: str, folder: Path, ensemble_manifest: manifest.Manifest, batch_size: int
) -> DomainScores:
    """The fold ensemble of `domain` on that domain's held-out crops, through its test-time views."""
    samples = plan_samples(plan)
    test = check_images([samples[i] for i in plan.domains[domain].test])
    crops = load_crops(test)
    scores = predict_crops(
        Ensemble.load(ensemble_manifest, folder),
        [crops[s.id] for s in test],
        ensemble_manifest.input,
        tta=ensemble_manifest.tta,
        batch_size=batch_size,
    )
    labels = np.array([s.label for s in test])
    thresholds = {"otsu": otsu_threshold(scores), "fixed": ensemble_manifest.threshold.value}
    return DomainScores(domain, tuple(s.id for s in test), labels, scores, thresholds)


def _out_of_fold(
    plan: Plan, folder: Path, ensemble_manifest: manifest.Manifest, rows: list[dict[str, str]], by: str
) -> list[DomainScores]:
    """The all-domains run's out-of-fold predictions, grouped by the table column `by`."""
    fixed = ensemble_manifest.threshold.value
    samples = plan_samples(plan)
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(str(getattr(samples[row["id"]], by)), []).append(row)
    result = []
    for name, members in sorted(groups.items()):
        scores = np.array([float(r["p_atypical"]) for r in members])
        labels = np.array([int(r["label"]) for r in members])
        thresholds = {"otsu": otsu_threshold(scores), "fixed": fixed}
        result.append(DomainScores(name, tuple(r["id"] for r in members), labels, scores, thresholds))
    return result


def _metrics(
    labels: np.ndarray, scores: np.ndarray, thresholds: dict[str, Any]
) -> dict[str, dict[str, float]]:
    return {name: binary_metrics(labels, scores, threshold=t) for name, t in thresholds.items()}


def _pooled(domains: list[DomainScores]) -> DomainScores:
    """All domains' crops together, each still decided by its own domain's thresholds."""
    thresholds = {
        name: np.concatenate([np.full(d.labels.size, d.thresholds[name]) for d in domains])
        for name in THRESHOLDS
    }
    return DomainScores(
        POOLED,
        tuple(i for d in domains for i in d.ids),
        np.concatenate([d.labels for d in domains]),
        np.concatenate([d.scores for d in domains]),
        thresholds,
    )


def format_table(report: dict[str, Any]) -> str:
    """Table 2 (one block per threshold): ROC AUC, balanced, NMF and AMF accuracy per domain."""
    blocks = [f"Test-time views: {', '.join(report['tta'])}"]
    for name, meaning in THRESHOLDS.items():
        lines = [
            f"Threshold: {meaning}",
            "",
            "| Domain | N | AMF | ROC AUC | Balanced acc. | NMF acc. | AMF acc. | Threshold |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for domain, metrics in report["domains"].items():
            m = metrics[name]
            values = (
                m["roc_auc"],
                m["balanced_accuracy"],
                m["specificity"],
                m["sensitivity"],
                m["threshold"],
            )
            cells = " | ".join("–" if math.isnan(v) else f"{v:.3f}" for v in values)
            lines.append(f"| {domain} | {m['n']} | {m['n_atypical']} | {cells} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_roc(panels: list[DomainScores], path: Path) -> Path:
    """Figure 1: one ROC curve per domain (the pooled one included) on one plot."""
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 6))
    for d in panels:
        if np.unique(d.labels).size == 2:
            RocCurveDisplay.from_predictions(
                d.labels, d.scores, name=d.name, ax=axes, plot_chance_level=False
            )
    axes.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axes.set(title="ROC per held-out domain", xlabel="1 - NMF accuracy", ylabel="AMF accuracy")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


def plot_confusion(panels: list[DomainScores], path: Path) -> Path:
    """Figure 2: one confusion matrix per domain (rows: truth, columns: prediction) at Otsu's threshold."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax, d in zip(axes.flat, panels, strict=False):
        predicted = (d.scores >= d.thresholds["otsu"]).astype(int)
        ConfusionMatrixDisplay.from_predictions(
            d.labels,
            predicted,
            labels=[0, 1],
            display_labels=["NMF", "AMF"],
            ax=ax,
            colorbar=False,
            cmap="Blues",
        )
        ax.set_title(d.name, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle("Confusion matrices at Otsu's threshold", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _prediction_rows(domains: list[DomainScores]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "domain": d.name,
            "label": int(label),
            "p_atypical": repr(float(score)),
            "threshold_otsu": d.thresholds["otsu"],
            "threshold_fixed": d.thresholds["fixed"],
        }
        for d in domains
        for i, label, score in zip(d.ids, d.labels, d.scores, strict=True)
    ]
