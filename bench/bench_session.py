"""ONNX Runtime session cost of the shipped graph: creation, time per crop and peak memory by run size.

Each run size is measured in a fresh process (`--child`): it opens the session exactly as the
container does (`amf.onnx_runtime.open_session`), then scores one stack's test-time views
(16 crops x 8 views = 128 inputs) in runs of that many inputs, three times. Peak RSS is the
child's; each figure is the median over --rounds processes, the sizes alternating. This is what
chose `amf.onnx_runtime.RUN_INPUTS`.

Usage: python bench/bench_session.py [--model model/] [--sizes 32 64 128] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_inference import ROOT, STACK, emit, heading

sys.path.insert(0, str(ROOT))

from amf import manifest, onnx_runtime, predict, stacks  # noqa: E402
from amf.preprocess import prepare  # noqa: E402

KEYS = ("created", "per_input_ms", "peak")


def child(model: Path, run_inputs: int) -> dict:
    """Open the session, score the stack's views in runs of `run_inputs`; times and peak RSS."""
    ensemble_manifest = manifest.load(model)
    batch = prepare(stacks.read_pages(stacks.discover(STACK).files[0]), ensemble_manifest.input)
    started = time.perf_counter()
    ensemble = onnx_runtime.OnnxEnsemble.load(ensemble_manifest, model, [onnx_runtime.CPU])
    created = time.perf_counter() - started
    onnx_runtime.RUN_INPUTS = run_inputs
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        predict.predict_views(ensemble, batch, ensemble_manifest.tta)
        seconds.append(time.perf_counter() - started)
    views = len(batch) * len(manifest.TTA_VIEWS[ensemble_manifest.tta])
    return {
        "created": created,
        "per_input_ms": 1000 * statistics.median(seconds) / views,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per run size (medians)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child)))
        return
    lines = [
        *heading(f"ONNX Runtime session of {args.model.name}/ (CPU), one stack's views"),
        "| inputs per run | session creation s | ms per input (crop x view) | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    results: dict[int, list[dict]] = {size: [] for size in args.sizes}
    for _ in range(args.rounds):  # sizes alternate, so a busy spell of the machine hits them all
        for size in args.sizes:
            command = [sys.executable, __file__, "--model", str(args.model), "--child", str(size)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[size].append(json.loads(output))
    for size, runs in results.items():
        created, per_input, peak = (statistics.median(run[key] for run in runs) for key in KEYS)
        lines.append(f"| {size} | {created:.2f} | {per_input:.1f} | {peak:.0f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
