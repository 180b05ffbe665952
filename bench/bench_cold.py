"""Cold start of the default serving path against the reference approach, alternated.

grand-challenge starts a fresh container per stack, so a whole process on one stack is the unit
of cost. Each round runs both, in alternating order (ABBA...), so that a busy spell of the machine
falls on both: `python inference.py` (the default: the shipped ensemble through ONNX Runtime)
and bench/reference.py (the organisers' approach: one EfficientNetV2-M, one crop per call).
Reports the median wall time, the largest peak RSS, and our fraction of the reference's
(the goals: at most 0.15 of its time and 0.25 of its memory).

Usage: python bench/bench_cold.py [--stack DIR] [--rounds 6] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench_inference import STACK, emit, heading, run_child
from reference import save_random_weights

REFERENCE = "reference: EfficientNetV2-M, 1 crop per call, 224 px (PyTorch)"


def reference_command(stack: Path, workdir: Path) -> list[str]:
    """One cold run of the organisers' approach on `stack` (random weights, made once in `workdir`)."""
    weights = workdir / "reference.pt"
    if not weights.is_file():
        save_random_weights(weights)
    io_args = ["--input", str(stack), "--output", str(workdir / "out")]
    return [sys.executable, "bench/reference.py", *io_args, "--weights", str(weights)]


def commands(stack: Path, workdir: Path) -> dict[str, list[str]]:
    io_args = ["--input", str(stack), "--output", str(workdir / "out")]
    return {
        REFERENCE: reference_command(stack, workdir),
        "ours: `python inference.py` (default path)": [sys.executable, "inference.py", *io_args],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, default=STACK)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/amf-bench-cold"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = commands(args.stack, args.workdir)
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            wall, peak, _ = run_child(runs[name], args.workdir)
            measured[name].append((wall, peak))
    (reference, ours) = (
        (statistics.median(w for w, _ in m), max(p for _, p in m)) for m in measured.values()
    )
    lines = [
        *heading(f"Cold start, one stack ({args.stack}), {args.rounds} alternated rounds"),
        "| approach | cold s (median) | peak RSS MiB (max) |",
        "|---|---|---|",
        *(
            f"| {name} | {statistics.median(w for w, _ in m):.2f} | {max(p for _, p in m):.0f} |"
            for name, m in measured.items()
        ),
        f"| ours / reference | {ours[0] / reference[0]:.3f} (goal <= 0.15) | "
        f"{ours[1] / reference[1]:.3f} (goal <= 0.25) |",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
