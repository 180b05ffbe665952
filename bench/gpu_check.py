"""What only a CUDA machine can check, in one command of at most 8 minutes, with a report.

Our machines have no GPU. On one with CUDA this checks the PyTorch back end in fp16 and both ONNX
graphs on ONNX Runtime's CUDA provider against fp32 on the CPU (real crops, the shipped model),
5 x efficientvit_l2 @256 px per stack against the organisers' 0.26 s, and a few mixed-precision
training steps, in one process and under torchrun. Each check runs in a child process, ended
with its children when its share of --time-budget runs out, so a hung CUDA call cannot stall the
report. Without CUDA only the environment is recorded and the rest is reported as skipped.
Exit status 1 when a check fails, else 0.

Usage:
    python bench/gpu_check.py                     # report: bench/results/gpu-check-<host>.md
    python bench/gpu_check.py --out report.md --time-budget 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "test")]  # amf; test/synthetic_data.py for the tiny plan

import bench_inference as bench  # noqa: E402
import ensembles  # noqa: E402
import warm_timing  # noqa: E402

from amf import manifest, plan, stacks, writing  # noqa: E402
from amf.manifest import ONNX_VARIANTS, TTA_VIEWS  # noqa: E402
from amf.predict import BAKED_MODEL_DIR, predict_views  # noqa: E402
from amf.writing import exit_on_terminate  # noqa: E402

STACK = bench.STACK
# Training steps with the shipped model's recipe: from scratch, efficientvit_l2's loss does not fall
# reliably in 24 steps (measured on the CPU); its training speed is bench_train.py's job.
TRAIN_ARCH, TRAIN_SIZE, TRAIN_LR = "efficientvit_m0", 128, "1e-3"
TOLERANCE = 1e-2  # max |P(atypical) on CUDA - fp32 CPU|: amf.onnx_export's fp16 bound (CUDA fp32 may be TF32)
ORGANISERS_S = 0.26  # the organisers' time per stack
WARM_REPEATS = 10
MIN_SECONDS = 30  # a check is not started with less of the budget left
LOG_LINES = 15
GRACE_SECONDS = 20  # for a timed-out check to end its children (torchrun waits up to 30 s)
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class Row:
    """One check's outcome: what was measured, and why it passed, failed or was skipped."""

    status: str
    figure: str = ""
    reason: str = ""
    log: str = ""  # stderr tail of a failed child, for the report


def verdict(ok: bool, figure: str, reason: str) -> Row:
    return Row(PASS if ok else FAIL, figure, reason)


# --- environment (in this process; cheap, so it also runs without CUDA) --------------------------


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_environment() -> Row:
    """Versions and devices the other checks ran with."""
    import onnxruntime as ort
    import torch

    from amf.onnx_runtime import cuda_loads

    gpus = [torch.cuda.get_device_properties(i) for i in range(cuda_devices())]
    providers = ", ".join(ort.get_available_providers())
    figure = (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}); "
        f"GPUs: {', '.join(f'{g.name} {g.total_memory / 2**30:.0f} GiB' for g in gpus) or 'none'}; "
        f"ONNX Runtime {ort.__version__} ({providers}), CUDA provider loads: {cuda_loads()}"
    )
    if not gpus and shutil.which("nvidia-smi") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return Row(FAIL, figure, "nvidia-smi is installed but torch sees no GPU (needs driver >= 580)")
    return Row(PASS, figure, "recorded")


# --- checks run in a child process each ----------------------------------------------------------


def cpu_reference(folder: Path) -> tuple[manifest.Manifest, np.ndarray, np.ndarray]:
    """The stack prepared for `folder`'s ensemble and its fp32 CPU P(atypical) over the test-time views."""
    import torch

    from amf.ensemble import Ensemble
    from amf.onnx_export import parity_batch

    ensemble_manifest = manifest.load(folder)
    batch = parity_batch(STACK, ensemble_manifest, 16)
    return (
        ensemble_manifest,
        batch,
        predict_views(
            Ensemble.load(ensemble_manifest, folder, torch.device("cpu")), batch, ensemble_manifest.tta
        ),
    )


def agreement(scores: np.ndarray, reference: np.ndarray, label: str) -> tuple[bool, str]:
    difference = float(np.max(np.abs(scores - reference)))
    return difference <= TOLERANCE, f"{label} max difference {difference:.2g}"  # NaN fails


def check_torch_fp16(workdir: Path) -> Row:
    """PyTorch on CUDA (fp16, as `Ensemble` serves it) vs fp32 on the CPU: shipped model, real crops."""
    import torch

    from amf.ensemble import Ensemble

    ensemble_manifest, batch, reference = cpu_reference(BAKED_MODEL_DIR)
    gpu = Ensemble.load(ensemble_manifest, BAKED_MODEL_DIR, torch.device("cuda"))
    ok, figure = agreement(predict_views(gpu, batch, ensemble_manifest.tta), reference, str(gpu.dtype))
    views = len(TTA_VIEWS[ensemble_manifest.tta])
    return verdict(ok, f"{figure} on {len(batch)} crops x {views} views", f"tolerance {TOLERANCE:g}")


def check_onnx_cuda(workdir: Path) -> Row:
    """ONNX Runtime's CUDA provider, fp16 and fp32 graphs, vs PyTorch fp32 on the CPU (shipped model)."""
    from amf import onnx_runtime

    if not onnx_runtime.cuda_loads():
        return Row(FAIL, "", "ONNX Runtime's CUDA provider cannot load (it needs CUDA 13 and cuDNN 9)")
    folder, label = ensembles.shipped_ensemble(workdir, STACK)  # exports a copy when model/ has no graphs
    ensemble_manifest, batch, reference = cpu_reference(folder)
    figures, ok = [], True
    for variant in ONNX_VARIANTS:
        path = folder / ensemble_manifest.onnx.graphs[variant].file
        session = onnx_runtime.open_session(path, [onnx_runtime.CUDA, onnx_runtime.CPU])
        on_cuda = session.get_providers()[0] == onnx_runtime.CUDA
        scores = predict_views(onnx_runtime.OnnxEnsemble(session), batch, ensemble_manifest.tta)
        agrees, figure = agreement(scores, reference, variant)
        ok = ok and agrees and on_cuda
        figures.append(figure if on_cuda else f"{figure} (CUDA did not start: ran on the CPU)")
    return verdict(ok, "; ".join(figures), f"tolerance {TOLERANCE:g}; {label}")


def check_l2_speed(workdir: Path) -> Row:
    """5 x efficientvit_l2 @256 px (the paper's ensemble, random weights), PyTorch on CUDA, per stack."""
    import torch

    folder = ensembles.random_folds(workdir / "paper-l2", *ensembles.PAPER)  # no ONNX: minutes for five L2
    stack = stacks.discover(STACK).files[0]
    started = time.perf_counter()
    score = warm_timing.scorer("torch", folder, None)
    crops = len(score(stacks.read_pages(stack)))
    first = time.perf_counter() - started
    warm = warm_timing.warm_seconds(lambda: score(stacks.read_pages(stack)), WARM_REPEATS)
    peak = torch.cuda.max_memory_allocated() / 2**30
    command = bench.entry_command("torch", folder, argparse.Namespace(stack=STACK, workdir=workdir))
    fresh, _ = bench.cold(command, 1, workdir)  # process start to JSON written, as grand-challenge pays
    figure = (
        f"warm {warm:.3f} s/stack of {crops} crops; load + first stack {first:.2f} s; "
        f"fresh `inference.py` {fresh:.1f} s; peak GPU memory {peak:.2f} GiB"
    )
    return verdict(warm <= ORGANISERS_S, figure, f"warm vs the organisers' {ORGANISERS_S} s per stack")


def tiny_plan(workdir: Path) -> Path:
    """A 2-fold plan over test/synthetic_data.py's crops (atypical ones darker: learnable)."""
    from synthetic_data import make_table

    path = workdir / "plan.json"
    if not path.is_file():
        table, samples = make_table(workdir / "tiny")
        plan.save_plan(plan.make_plan(samples, table=table, domain_column=None, n_folds=2), path)
    return path


def tiny_training(launcher: list[str], run: Path, workdir: Path, note: str) -> Row:
    """`amf train` (3 epochs of 256 crops, efficientvit_m0 @128) on fold 0; the loss must fall.

    Its output goes to this process's stderr, so a failure or a timeout reports its end.
    """
    from amf import runs, train

    arguments = ["-m", "amf", "train", "--plan", str(tiny_plan(workdir)), "--out", str(run), "--fold", "0"]
    arguments += ["--arch", TRAIN_ARCH, "--size", str(TRAIN_SIZE), "--pretrained", "none", "--epochs", "3"]
    arguments += ["--epoch-size", "256", "--batch-size", "32", "--lr", TRAIN_LR, "--workers", "2"]
    subprocess.run([*launcher, *arguments], cwd=ROOT, stdout=sys.stderr, check=True)
    rows = writing.read_rows(runs.model_dir(run, plan.ALL, 0) / train.METRICS)
    losses = [float(row["train_loss"]) for row in rows]
    speed = float(rows[-1]["images_per_s"])
    figure = f"{note}; train loss {' > '.join(f'{x:.3f}' for x in losses)}; {speed:.0f} images/s"
    falling = all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    return verdict(falling, figure, "loss finite and lower in the last epoch than in the first")


def check_amp_training(workdir: Path) -> Row:
    """A few mixed-precision training steps (`amf train`, efficientvit_m0 @128 px) on one GPU."""
    import torch

    from amf.runtime import autocast_dtype

    dtype = autocast_dtype(True, torch.device("cuda"))
    return tiny_training([sys.executable], workdir / "amp", workdir, f"autocast {dtype}")


def check_torchrun(workdir: Path) -> Row:
    """The same training under torchrun, one process per GPU present (DDP over nccl)."""
    gpus = cuda_devices()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return tiny_training(launcher, workdir / "torchrun", workdir, f"{gpus} process(es)")


# Name -> (check, seconds it may take at most), in the order they run: the ONNX check exports the
# shipped ensemble first (minutes), so it runs last, on what is left of the budget.
CHECKS: dict[str, tuple[Callable[[Path], Row], float]] = {
    "torch-cuda-fp16": (check_torch_fp16, 90),
    "l2-speed": (check_l2_speed, 150),
    "amp-train": (check_amp_training, 120),
    "torchrun": (check_torchrun, 150),
    "onnx-cuda": (check_onnx_cuda, 300),
}


def tail(text: str, lines: int = LOG_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def stop(child: subprocess.Popen) -> None:
    """End the child's process group: SIGTERM first, on which torchrun ends its workers (they run
    in sessions of their own, out of the group's reach), SIGKILL for what is left after a grace time.
    """
    os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(GRACE_SECONDS)
    while time.monotonic() < deadline:
        try:
            os.killpg(child.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def run_check(name: str, seconds: float, workdir: Path) -> Row:
    """One check in a child process (own session), killed with everything it started after `seconds`."""
    command = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir)]
    pipe = subprocess.PIPE
    with subprocess.Popen(
        command, cwd=ROOT, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    ) as child:
        try:
            out, err = child.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            stop(child)
            return Row(FAIL, "", f"timed out after {seconds:.0f} s", tail(child.communicate()[1]))
        except BaseException:  # Ctrl-C, SIGTERM: its own session would outlive this process
            stop(child)
            raise
    if child.returncode != 0:
        return Row(FAIL, "", f"exited {child.returncode}: {tail(err, 1)}", tail(err))
    return Row(**json.loads(out.splitlines()[-1]))


def run_all(selected: list[str], budget: float, workdir: Path) -> dict[str, Row]:
    """The environment, then each selected CUDA check while the budget lasts; one line per check."""
    deadline = time.monotonic() + budget
    rows = {"environment": check_environment()}
    print(line("environment", rows["environment"]), flush=True)
    gpus = cuda_devices()
    for name, (_, seconds) in CHECKS.items():
        left = deadline - time.monotonic()
        if name not in selected:
            rows[name] = Row(SKIP, "", "not selected (--only)")
        elif not gpus:
            rows[name] = Row(SKIP, "", "no CUDA device (torch.cuda.is_available() is False)")
        elif left < MIN_SECONDS:
            rows[name] = Row(SKIP, "", f"time budget of {budget:.0f} s spent")
        else:
            rows[name] = run_check(name, min(seconds, left), workdir)
        print(line(name, rows[name]), flush=True)
    return rows


# --- report ---------------------------------------------------------------------------------------


def line(name: str, row: Row) -> str:
    return f"{row.status} {name}: " + "; ".join(part for part in (row.figure, row.reason) if part)


def table_row(name: str, row: Row) -> str:
    cells = [name, describe(name), row.status, row.figure, row.reason]
    return "| " + " | ".join(text.replace("|", "\\|") for text in cells) + " |"  # a bare | ends a cell


def describe(name: str) -> str:
    check = check_environment if name == "environment" else CHECKS[name][0]
    return " ".join(check.__doc__.split("\n\n")[0].split())


def report(rows: dict[str, Row], command: str, seconds: float, budget: float) -> str:
    crops = len(stacks.read_pages(stacks.discover(STACK).files[0]))
    lines = [
        "# GPU check: the CUDA paths our CPU machines cannot test",
        "",
        f"- Machine: {bench.machine()}. {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- {bench.versions()}.",
        f"- Command: `{command}` ({seconds:.0f} s, time budget {budget:.0f} s).",
        f"- Stack: `{STACK}` ({crops} crops); P(atypical) tolerance against fp32 on the CPU: {TOLERANCE:g}.",
        "",
        "| check | what | status | measured | reason |",
        "|---|---|---|---|---|",
        *(table_row(name, row) for name, row in rows.items()),
    ]
    for name, row in rows.items():
        if row.log:
            lines += ["", f"## {name}: end of its log", "", "```", row.log, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    default_out = bench.RESULTS / f"gpu-check-{os.uname().nodename}.md"
    parser.add_argument("--out", type=Path, default=default_out, help=f"report (default: {default_out})")
    parser.add_argument("--time-budget", type=float, default=420, help="seconds for all checks (default 420)")
    parser.add_argument("--only", action="append", choices=list(CHECKS), help="run this check (repeatable)")
    parser.add_argument("--worker", choices=list(CHECKS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        print(json.dumps(asdict(CHECKS[args.worker][0](args.workdir))))
        return 0
    exit_on_terminate()  # SIGTERM ends the running check too
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amf-gpu-check-") as workdir:
        rows = run_all(args.only or list(CHECKS), args.time_budget, Path(workdir))
    command = " ".join(["python bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, command, time.monotonic() - started, args.time_budget), "utf-8")
    print(f"report -> {args.out}")
    return 1 if any(row.status == FAIL for row in rows.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
