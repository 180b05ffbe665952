"""Speed of the container's unit of cost, one stack, against the organisers' reference approach.

grand-challenge starts a fresh container for every stack of up to 16 crops, so start-up counts as
much as the forward pass. For each approach this measures, in child processes:

- cold: `python inference.py` (or bench/reference.py) on one stack, process start to JSON
  written, wall time, median of --cold-repeats runs, and the child's peak RSS;
- warm: one stack (read, prepare, predict through the manifest's test-time views) with the
  model already loaded, median of --repeats;
- throughput: crops/s over a large folder (AMi-Br when present, else synthetic crops).

Approaches: (1) the reference approach (bench/reference.py: one EfficientNetV2-M, one crop at a
time, 224 px), (2) our ensemble in PyTorch, batched, (3) our ensemble in ONNX Runtime, each for
the shipped ensemble (model/, or a random 5 x efficientvit_m0 at 128 px while model/ has none)
and for a random 5 x efficientvit_l2 at 256 px (the paper's). An ablation on the shipped ensemble
says what each speed-up step buys. Nothing is asserted: it is a measurement, not a test. The
same command runs on a GPU machine (every approach then uses CUDA). The ensembles are built by
bench/ensembles.py; the warm timings and the ablation run in bench/warm_timing.py's worker.

Usage:
    python bench/bench_inference.py                  # ~10 min on 2 CPU cores
    python bench/bench_inference.py --skip-l2 --repeats 3 --cold-repeats 2
    python bench/bench_inference.py --workdir /tmp/amf-bench   # keep built ensembles for reruns
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ensembles import FOLDS, PAPER, random_ensemble, shipped_ensemble, synthetic_folder  # noqa: E402
from warm_timing import worker  # noqa: E402

from amf import stacks  # noqa: E402
from amf.onnx_runtime import usable_cpus  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
GC_SAMPLE = SHARED / "gc-sample" / "input"
STACK = GC_SAMPLE if GC_SAMPLE.is_dir() else ROOT / "test" / "input"  # the real sample, else ours
AMIBR_PATCHES = SHARED / "ami-br" / "patches"
RESULTS = ROOT / "bench" / "results"
L2_PARITY_CROPS = 4  # its PyTorch reference alone takes ~1.6 s per crop on 2 CPU cores

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Result:
    """One approach on one ensemble; times in seconds, memory in MiB."""

    name: str
    cold_s: float
    cold_rss_mib: float
    warm_s: float
    throughput: float
    throughput_crops: int


# --- child processes ---------------------------------------------------------------------------


# Runs the command given after the report path and writes [exit status, wall s, peak RSS MiB] there.
# A child forked straight from this (large) process would report this process's RSS as its own
# peak: Linux keeps the pre-exec high-water mark. This launcher is small, so its child's is true.
_LAUNCHER = """import json, resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
open(sys.argv[1], "w").write(json.dumps([status, wall, peak]))
"""


def heading(title: str) -> list[str]:
    """A report's first lines: what was measured, on which machine (CPU model, cores) and when,
    and the command: our machines of one kind differ in CPU model from day to day."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"{title}; {machine()}, {when}.",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
    ]


def emit(lines: list[str], out: Path | None) -> None:
    """Print a markdown report, and write it to `out` when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)


def run_child(command: list[str], workdir: Path) -> tuple[float, float, str]:
    """Run `command`; return its wall seconds, its own peak RSS in MiB and its stdout."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        measured, out, err = (Path(scratch) / name for name in ("measured.json", "stdout", "stderr"))
        with out.open("w") as stdout, err.open("w") as stderr:
            launcher = [sys.executable, "-c", _LAUNCHER, str(measured), *command]
            subprocess.run(launcher, stdout=stdout, stderr=stderr, cwd=ROOT, check=False)
        status, wall, peak = json.loads(measured.read_text())
        if status != 0:
            raise RuntimeError(f"{command} failed ({status}):\n{err.read_text()[-3000:]}")
        return wall, peak, out.read_text()


def cold(command: list[str], repeats: int, workdir: Path) -> tuple[float, float]:
    """Median wall time and largest peak RSS of `repeats` fresh processes running `command`."""
    runs = [run_child(command, workdir) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def entry_command(approach: str, model_dir: Path | None, args: argparse.Namespace) -> list[str]:
    """The container's own entry point (or the reference script), as grand-challenge starts it."""
    io_args = ["--input", str(args.stack), "--output", str(args.workdir / "out")]
    if approach == "reference":
        return [sys.executable, "bench/reference.py", *io_args, "--weights", str(args.reference_weights)]
    return [sys.executable, "inference.py", *io_args, "--model", str(model_dir), "--backend", approach]


def measure(
    approach: str, name: str, model_dir: Path | None, args: argparse.Namespace, large: bool
) -> Result:
    """Cold runs of the entry point, then one worker process for the warm time and throughput."""
    cold_repeats = args.l2_repeats if large else args.cold_repeats
    repeats = args.l2_repeats if large else args.repeats
    crops = args.l2_throughput_crops if large else args.throughput_crops
    log.info("%s: %d cold runs, %d warm, up to %d crops", name, cold_repeats, repeats, crops)
    cold_s, rss = cold(entry_command(approach, model_dir, args), cold_repeats, args.workdir)
    report = json.loads(run_child(worker_command(approach, model_dir, args, repeats, crops), args.workdir)[2])
    log.info(
        "%s: cold %.2f s, warm %.3f s, %.1f crops/s", name, cold_s, report["warm_s"], report["throughput"]
    )
    return Result(name, cold_s, rss, report["warm_s"], report["throughput"], report["crops"])


def worker_command(
    approach: str, model_dir: Path | None, args: argparse.Namespace, repeats: int, crops: int
) -> list[str]:
    return [
        *(sys.executable, __file__, "--worker", approach, "--model", str(model_dir or "")),
        *("--stack", str(args.stack), "--folder", str(args.folder), "--repeats", str(repeats)),
        *("--throughput-crops", str(crops), "--throughput-seconds", str(args.throughput_seconds)),
        *("--reference-weights", str(args.reference_weights)),
    ]


# --- report --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or platform.machine(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True).stdout.strip() or gpu
    return f"{cpu}, {usable_cpus()} usable CPU cores, {memory:.0f} GiB RAM, {gpu}"


def versions() -> str:
    from importlib import metadata

    names = ("torch", "timm", "onnxruntime-gpu", "onnxruntime", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def results_table(results: list[Result]) -> list[str]:
    reference = results[0]
    lines = [
        "| approach | cold s | warm s | crops/s (n) | peak RSS MiB | cold x | warm x | crops/s x |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratios = (
            reference.cold_s / r.cold_s,
            reference.warm_s / r.warm_s,
            r.throughput / reference.throughput,
        )
        lines.append(
            f"| {r.name} | {r.cold_s:.2f} | {r.warm_s:.3f} | {r.throughput:.1f} ({r.throughput_crops}) "
            f"| {r.cold_rss_mib:.0f} | " + " | ".join(f"{x:.1f}x" for x in ratios) + " |"
        )
    return lines


def report(args: argparse.Namespace, results: list[Result], steps: list, startup: dict, context: str) -> str:
    stack_crops = len(stacks.read_pages(stacks.discover(args.stack).files[0]))
    lines = [
        "# Inference speed: one stack, the reference approach vs our ensemble",
        "",
        f"- Machine: {machine()}. {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- {versions()}.",
        f"- Command: `{' '.join(['python bench/bench_inference.py', *args.argv])}`.",
        f"- Stack: `{args.stack}` ({stack_crops} crops); throughput folder: `{args.folder}`.",
        f"- Repeats: cold {args.cold_repeats}, warm {args.repeats} (efficientvit_l2: {args.l2_repeats} each);"
        f" medians. {context}",
        "",
        "Cold: process start to JSON written (`python inference.py`), the unit grand-challenge pays per",
        "stack. Warm: read + prepare + predict one stack with the model loaded. Peak RSS: the cold",
        "process's. The last three columns: how many times faster than (1), the reference approach.",
        "",
        *results_table(results),
        "",
        "## What each step buys (warm, one stack, the shipped ensemble)",
        "",
        "| setting | warm s/stack | session load s |",
        "|---|---|---|",
        *(f"| {name} | {warm:.4f} | {'' if load is None else f'{load:.2f}'} |" for name, warm, load in steps),
        "",
        "## Start-up: a fresh process importing only",
        "",
        "| imports | wall s | peak RSS MiB |",
        "|---|---|---|",
        *(f"| `{name}` | {wall:.2f} | {rss:.0f} |" for name, (wall, rss) in startup.items()),
    ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", type=Path, default=STACK, help=f"default: {STACK}")
    parser.add_argument("--folder", type=Path, help="crops for throughput (default: AMi-Br, else synthetic)")
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats (default 5)")
    parser.add_argument(
        "--cold-repeats", type=int, default=3, help="fresh processes per approach (default 3)"
    )
    parser.add_argument("--l2-repeats", type=int, default=1, help="cold and warm repeats for efficientvit_l2")
    parser.add_argument("--throughput-crops", type=int, default=512)
    parser.add_argument("--l2-throughput-crops", type=int, default=16)
    parser.add_argument(
        "--throughput-seconds", type=float, default=30.0, help="stop a throughput run after this"
    )
    parser.add_argument("--skip-l2", action="store_true", help="only the reference and the shipped ensemble")
    parser.add_argument(
        "--workdir", type=Path, help="keeps built ensembles for reruns (default: a temp folder)"
    )
    parser.add_argument(
        "--out", type=Path, help="markdown report (default: bench/results/inference-<machine>.md)"
    )
    parser.add_argument(
        "--worker", choices=("reference", "torch", "onnx", "ablation"), help=argparse.SUPPRESS
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--reference-weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def run_benchmark(args: argparse.Namespace) -> str:
    """Build what is needed in args.workdir, measure every approach, return the markdown report."""
    started = time.perf_counter()
    from reference import save_random_weights

    args.reference_weights = args.workdir / "reference.pt"
    if not args.reference_weights.is_file():
        save_random_weights(args.reference_weights)
    args.folder = args.folder or (
        AMIBR_PATCHES
        if AMIBR_PATCHES.is_dir()
        else synthetic_folder(args.workdir / "crops", args.throughput_crops)
    )
    shipped, shipped_label = shipped_ensemble(args.workdir, args.stack)
    ensembles = [(shipped, shipped_label, False)]
    if not args.skip_l2:
        paper = random_ensemble(args.workdir / "paper-l2", *PAPER, args.stack, L2_PARITY_CROPS)
        ensembles.append((paper, f"{FOLDS} x {PAPER[0]} @{PAPER[1]} px, random (the paper's)", True))
    built, load = time.perf_counter() - started, os.getloadavg()[0]
    results = [
        measure("reference", "(1) reference: EfficientNetV2-M, 1 crop/call, 224 px", None, args, False)
    ]
    for number, (folder, label, large) in enumerate(ensembles):
        for offset, (approach, backend) in enumerate((("torch", "PyTorch"), ("onnx", "ONNX Runtime"))):
            name = f"({2 + offset}{'ab'[number]}) {label}, {backend}"
            results.append(measure(approach, name, folder, args, large))
    ablation_command = worker_command("ablation", shipped, args, args.repeats, 0)
    steps = json.loads(run_child(ablation_command, args.workdir)[2])
    imports = ("import torch, timm", "import onnxruntime, numpy, PIL.Image")
    startup = {code: cold([sys.executable, "-c", code], args.cold_repeats, args.workdir) for code in imports}
    context = (
        f"Building the ensembles took {built:.0f} s (not counted). Load average (1 min) of the machine,"
        f" other jobs included: {load:.1f} when measuring began, {os.getloadavg()[0]:.1f} at the end."
    )
    return report(args, results, steps, startup, context)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="amf-bench-") as scratch:
        args.workdir = args.workdir or Path(scratch)
        args.workdir.mkdir(parents=True, exist_ok=True)
        text = run_benchmark(args)
    gpu = "gpu" if shutil.which("nvidia-smi") else "cpu"
    out = args.out or RESULTS / f"inference-{gpu}-{usable_cpus()}core.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log.info("report -> %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
