"""The worker side of bench_inference.py: warm timings inside one process, and the ablation.

bench_inference.py starts itself with `--worker APPROACH` for these, so that each approach's
model is loaded in a fresh process; gpu_check.py uses the same functions on CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amf import manifest, predict, stacks  # noqa: E402
from amf.onnx_runtime import usable_cpus  # noqa: E402
from amf.preprocess import prepare  # noqa: E402


def scorer(approach: str, model_dir: Path, weights: Path) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A function from uint8 pages to P(atypical), with the model loaded once."""
    if approach == "reference":
        from reference import Reference

        return Reference(weights).predict
    ensemble_manifest = manifest.load(model_dir)
    predictor = predict.load_predictor(ensemble_manifest, model_dir, approach)
    return lambda pages: predict.predict_views(
        predictor, prepare(pages, ensemble_manifest.input), ensemble_manifest.tta
    )


def warm_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run` after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(
    score: Callable[[list[np.ndarray]], np.ndarray], files: list[Path], seconds: float
) -> tuple[float, int]:
    """Crops/s reading, preparing and scoring `files` 64 at a time; stops after `seconds`."""
    done, start = 0, time.perf_counter()
    for first in range(0, len(files), 64):
        pages = [page for path in files[first : first + 64] for page in stacks.read_pages(path)]
        score(pages)
        done += len(pages)
        if time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start), done


def worker(args: argparse.Namespace) -> None:
    """One approach's warm time and throughput, printed as JSON for the parent."""
    if args.worker == "ablation":
        print(json.dumps(ablation(Path(args.model), args.stack, args.repeats)))
        return
    score = scorer(args.worker, Path(args.model), args.reference_weights)
    stack_file = stacks.discover(args.stack).files[0]
    warm = warm_seconds(lambda: score(stacks.read_pages(stack_file)), args.repeats)
    files = list(stacks.discover(args.folder).files[: args.throughput_crops])
    speed, crops = throughput(score, files, args.throughput_seconds)
    print(json.dumps({"warm_s": warm, "throughput": speed, "crops": crops}))


# --- ablation: what each step buys, on the shipped ensemble --------------------------------------


def ablation(model_dir: Path, stack: Path, repeats: int) -> list[tuple[str, float, float | None]]:
    """(setting, warm s per stack, session load s) for the settings we chose between."""
    ensemble_manifest = manifest.load(model_dir)
    batch = prepare(stacks.read_pages(stacks.discover(stack).files[0]), ensemble_manifest.input)
    return [
        *_torch_steps(ensemble_manifest, model_dir, batch, repeats),
        *_onnx_steps(ensemble_manifest, model_dir, batch, repeats),
    ]


def _torch_steps(
    ensemble_manifest: manifest.Manifest, model_dir: Path, batch: np.ndarray, repeats: int
) -> list[tuple[str, float, None]]:
    import copy

    import torch

    from amf.ensemble import Ensemble

    ensemble = Ensemble.load(ensemble_manifest, model_dir)
    nchw = [copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in ensemble.members]

    @torch.inference_mode()
    def contiguous() -> np.ndarray:
        x = torch.from_numpy(batch).to(ensemble.device, ensemble.dtype)
        return sum(torch.sigmoid(member(x).float()) for member in nchw).cpu().numpy()

    threads = torch.get_num_threads()
    steps = [
        (
            "one crop per call (the reference's way)",
            threads,
            lambda: [ensemble.predict(c[None]) for c in batch],
        ),
        ("stack batched, contiguous NCHW", threads, contiguous),
        ("stack batched, channels-last (shipped)", threads, lambda: ensemble.predict(batch)),
        ("stack batched, channels-last", 1, lambda: ensemble.predict(batch)),
    ]
    rows = []
    for name, count, run in steps:
        torch.set_num_threads(count)
        rows.append(
            (f"PyTorch {ensemble.device.type}, {name}, {count} thread(s)", warm_seconds(run, repeats), None)
        )
    torch.set_num_threads(threads)
    return rows


def _onnx_steps(
    ensemble_manifest: manifest.Manifest, model_dir: Path, batch: np.ndarray, repeats: int
) -> list[tuple[str, float, float]]:
    import onnxruntime as ort

    from amf.onnx_runtime import CPU, default_providers, pick_variant

    providers = default_providers()
    variants = [pick_variant(ensemble_manifest.onnx.graphs, on_gpu=providers[0] != CPU)]
    if providers[0] != CPU and "fp32" in ensemble_manifest.onnx.graphs and variants[0] != "fp32":
        variants.append("fp32")  # what fp16 buys on the GPU
    level = ort.GraphOptimizationLevel
    settings = [("off", level.ORT_DISABLE_ALL), ("basic", level.ORT_ENABLE_BASIC)]
    settings += [("extended", level.ORT_ENABLE_EXTENDED), ("all", level.ORT_ENABLE_ALL)]
    cpus = usable_cpus()
    rows = []
    for variant in variants:
        graph = model_dir / ensemble_manifest.onnx.graphs[variant].file
        for name, value in settings:
            for threads in sorted({1, cpus}) if name == "all" else [cpus]:
                options = ort.SessionOptions()
                options.graph_optimization_level, options.intra_op_num_threads = value, threads
                start = time.perf_counter()
                session = ort.InferenceSession(str(graph), options, providers=providers)
                load = time.perf_counter() - start
                feed = {session.get_inputs()[0].name: batch}
                warm = warm_seconds(lambda s=session, f=feed: s.run(None, f), repeats)
                provider = session.get_providers()[0].removesuffix("ExecutionProvider")
                label = f"ONNX Runtime {provider}, {variant}, optimisation {name}"
                rows.append((f"{label}, {threads} thread(s)", warm, load))
    return rows
