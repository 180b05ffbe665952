"""Per-fold summary of trained runs: best epoch, validation AUROC, minutes and images/s.

The training-time and per-fold figures of model/MODEL_CARD.md come from this script:

    python bench/run_summary.py ../runs/all-mobilenetv2-128 ../runs/all-mobilenetv1-128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amf.train import METRICS, RESULT  # noqa: E402
from amf.writing import read_rows  # noqa: E402


def summarise(run: Path) -> list[str]:
    """One markdown row per finished fold of `run`, then the run's totals."""
    rows = []
    minutes, speeds = [], []
    for result_path in sorted(run.glob(f"*/fold*/{RESULT}")):
        result = json.loads(result_path.read_text())
        epochs = read_rows(result_path.parent / METRICS)
        speed = statistics.median(float(e["images_per_s"]) for e in epochs)
        minutes.append(result["seconds"] / 60)
        speeds.append(speed)
        per_epoch = ", ".join(f"{float(e['val_auroc']):.3f}" for e in epochs)
        rows.append(
            f"| {run.name} | {result_path.parent.name} | {result['best_epoch']} | "
            f"{result['validation']['roc_auc']:.4f} | {minutes[-1]:.1f} | {speed:.0f} | {per_epoch} |"
        )
    if minutes:
        rows.append(
            f"| {run.name} | all {len(minutes)} | | | {sum(minutes):.0f} in all | "
            f"{statistics.median(speeds):.0f} (median) | |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="run folders from `amf train`")
    args = parser.parse_args()
    print("| run | fold | best epoch | val AUROC | minutes | images/s | val AUROC by epoch |")
    print("|---|---|---:|---:|---:|---:|---|")
    for run in args.runs:
        print("\n".join(summarise(run)))


if __name__ == "__main__":
    main()
