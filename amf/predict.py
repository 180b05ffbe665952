"""One run of the classifier: input -> preprocess -> ensemble -> output, nothing more."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from amf import manifest, progress, report, stacks, writing
from amf.errors import AmfError, InputError, ModelError
from amf.manifest import TTA_VIEWS, InputSpec, Manifest
from amf.preprocess import prepared_batches, views

log = logging.getLogger(__name__)

GRAND_CHALLENGE_MODEL_DIR = Path("/opt/ml/model")
BAKED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
BACKENDS = ("auto", "torch", "onnx")
BACKEND_VARIABLE = "AMF_BACKEND"
# Crops per batch: one grand-challenge stack, 128 network inputs with the 8 test-time views.
# Larger batches were no faster per crop on 2 cores; on the CPU both back ends split a batch into
# passes of a fixed size (amf.onnx_runtime.RUN_INPUTS, amf.ensemble.CPU_FORWARD_INPUTS), so only
# the prepared batch itself (48 KiB a network input at 128 px) grows with it.
BATCH_SIZE = 16
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


class Predictor(Protocol):
    """What both back ends offer: (N, 3, S, S) float32 from `prepare` -> (N,) float64 P(atypical)."""

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def predict_views(predictor: Predictor, batch: np.ndarray, tta: str) -> np.ndarray:
    """Mean P(atypical) over the test-time views of a prepared batch, as the container serves it.

    All views go through the ensemble as one batch: one call instead of one per view.
    """
    turned = views(batch, tta)
    return predictor.predict(np.concatenate(turned)).reshape(len(turned), len(batch)).mean(axis=0)


def predict_crops(
    predictor: Predictor,
    crops: Iterable[np.ndarray],
    spec: InputSpec,
    *,
    tta: str = "none",
    batch_size: int = 64,
) -> np.ndarray:
    """Mean P(atypical) of decoded crops over the test-time views `tta`, as the container scores
    them: validation, out-of-fold scores and evaluation go through here."""
    if tta not in TTA_VIEWS:
        raise InputError(f"test-time augmentation must be one of {list(TTA_VIEWS)}, got {tta!r}")
    scores = [predict_views(predictor, batch, tta) for batch in prepared_batches(crops, spec, batch_size)]
    return np.concatenate(scores) if scores else np.zeros(0)


def default_model_dir() -> Path:
    """grand-challenge's uploaded model tarball when it holds a manifest, else the baked-in one."""
    if (GRAND_CHALLENGE_MODEL_DIR / manifest.MANIFEST_NAME).is_file():
        return GRAND_CHALLENGE_MODEL_DIR
    return BAKED_MODEL_DIR


def choose_backend(ensemble_manifest: Manifest, backend: str | None = None) -> str:
    """ "onnx" when the manifest names a graph, else "torch"; `backend` or AMF_BACKEND forces one."""
    backend = backend or os.environ.get(BACKEND_VARIABLE) or "auto"
    if backend not in BACKENDS:
        raise AmfError(f"back end must be one of {BACKENDS}, got {backend!r} (flag or {BACKEND_VARIABLE})")
    if backend == "auto":
        return "onnx" if ensemble_manifest.onnx else "torch"
    return backend


def load_predictor(ensemble_manifest: Manifest, model_dir: Path, backend: str | None = None) -> Predictor:
    """The ensemble on its back end (`choose_backend`).

    Each back end's module is imported only here: the ONNX path never loads torch or timm.
    """
    _return_freed_buffers()  # before the back end's own start-up buffers
    if choose_backend(ensemble_manifest, backend) == "onnx":
        from amf.onnx_runtime import OnnxEnsemble

        return OnnxEnsemble.load(ensemble_manifest, model_dir)
    from amf.ensemble import Ensemble

    return Ensemble.load(ensemble_manifest, model_dir)


@dataclass(frozen=True)
class LoadedEnsemble:
    """An ensemble loaded once (invoke mode): its manifest, its folder and its back end."""

    manifest: Manifest
    model_dir: Path
    predictor: Predictor


def load_ensemble(model_dir: Path, backend: str | None = None) -> LoadedEnsemble:
    """The manifest and the ensemble on its back end, for a process that runs many jobs."""
    ensemble_manifest = manifest.load(model_dir)
    return LoadedEnsemble(
        ensemble_manifest, Path(model_dir), load_predictor(ensemble_manifest, model_dir, backend)
    )


def run(
    input_path: Path,
    output_dir: Path,
    model_dir: Path,
    *,
    batch_size: int = BATCH_SIZE,
    backend: str | None = None,
) -> int:
    """Classify every crop under `input_path` and write the predictions to `output_dir`.

    Everything cheap is checked before the ensemble loads: the manifest, the input layout, the
    output folder, every page's header (count, size, pixel type, data inside the file) and the
    values of pages whose type can hold a bad one (float, signed or 32-bit: stacks.count_pages).
    Then each page is decoded, one at a time, as it is classified: once for 8- and 16-bit
    unsigned pages, a second time for the others. Returns the number of crops classified.
    Raises AmfError on bad input, a bad ensemble or an unwritable output; then no output of ours
    is left in `output_dir`, not even an earlier run's.
    """

    def job() -> int:
        ensemble_manifest = manifest.load(model_dir)
        # The heavy imports come only after the input checks, when _run calls `load`.
        load = functools.partial(load_predictor, ensemble_manifest, model_dir, backend)
        return _run(Path(input_path), Path(output_dir), ensemble_manifest, Path(model_dir), load, batch_size)

    return _all_or_nothing(output_dir, job)


def run_job(
    ensemble: LoadedEnsemble, input_path: Path, output_dir: Path, *, batch_size: int = BATCH_SIZE
) -> int:
    """`run` on an ensemble already loaded: the same checks, output and errors, without the load."""

    def job() -> int:
        loaded = lambda: ensemble.predictor  # noqa: E731
        return _run(
            Path(input_path), Path(output_dir), ensemble.manifest, ensemble.model_dir, loaded, batch_size
        )

    return _all_or_nothing(output_dir, job)


def _all_or_nothing(output_dir: Path, job: Callable[[], int]) -> int:
    """`job()`, or on any error or termination no output of ours left in `output_dir`."""
    made_here = not Path(output_dir).exists()
    try:
        return job()
    except (AmfError, SystemExit, KeyboardInterrupt):
        writing.remove_outputs(output_dir, folder=made_here)
        raise


def _run(
    input_path: Path,
    output_dir: Path,
    ensemble_manifest: Manifest,
    model_dir: Path,
    load: Callable[[], Predictor],
    batch_size: int,
) -> int:
    if batch_size < 1:
        raise AmfError(f"batch size must be at least 1, got {batch_size}")
    job = stacks.discover(input_path)
    writing.check_output_dir(output_dir)
    names = [
        name for path in job.files for name in stacks.page_names(path, job.root, stacks.count_pages(path))
    ]
    log.info(
        "ensemble %r from %s, views %s, threshold %.4f",
        ensemble_manifest.name,
        model_dir,
        ensemble_manifest.tta,
        ensemble_manifest.threshold.value,
    )
    ensemble = load()
    # A folder run's report.html shows a thumbnail of each page, kept as the page is decoded.
    thumbnails = None if job.grand_challenge else report.Thumbnails()
    pages = _pages(job, ensemble_manifest.input)
    pages = pages if thumbnails is None else thumbnails.tap(pages)
    prepared = prefetch(prepared_batches(pages, ensemble_manifest.input, batch_size))
    batches = progress.tracked(prepared, total=len(names))
    scores = [predict_views(ensemble, batch, ensemble_manifest.tta) for batch in batches]
    probabilities = np.concatenate(scores)
    if len(probabilities) != len(names):
        raise InputError(
            f"{input_path}: files changed while read ({len(names)} pages, then {len(probabilities)})"
        )
    if not np.all(np.isfinite(probabilities)):
        raise ModelError(f"{model_dir}: ensemble produced non-finite P(atypical); weights are broken")
    threshold = ensemble_manifest.threshold.value
    records = writing.predictions(probabilities, threshold)
    html = None
    if thumbnails is not None:
        html = report.render(names, records, thumbnails.images, threshold=threshold, source=str(input_path))
    writing.write_predictions(output_dir, records, None if job.grand_challenge else names, html)
    log.info("%d crops from %s -> %s", len(records), input_path, output_dir)
    return len(records)


def _pages(job: stacks.Job, spec: InputSpec) -> Iterator[np.ndarray]:
    """Every page of every file, in order, one decoded page at a time (a large one already at
    the network's input size)."""
    for path in job.files:
        yield from stacks.iter_pages(path, shrink_to=spec)


@functools.cache
def _return_freed_buffers() -> None:
    """Have glibc give every freed buffer of 1 MiB or more back to the system at once.

    By default glibc raises its mmap threshold up to 32 MiB after freeing a large buffer, and
    later buffers of that size stay in the heap when freed: a process that decodes large pages
    keeps the most it ever held, fragmented, until it exits (400 pages of 4096^2 through ONNX
    Runtime: 736 MiB peak with glibc's default, 635 with this threshold from the start). A batch
    is a few MiB, so mapping each costs nothing measurable. Elsewhere than glibc: nothing to do.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def prefetch(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The next batch is decoded on a second thread while the ensemble runs the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch
