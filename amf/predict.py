"""One run of the classifier: input -> preprocess -> ensemble -> output, nothing more."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from amf import io, manifest
from amf.errors import AmfError, ModelError
from amf.preprocess import prepare, views

log = logging.getLogger(__name__)

GRAND_CHALLENGE_MODEL_DIR = Path("/opt/ml/model")
BAKED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
BACKENDS = ("auto", "torch", "onnx")
BACKEND_VARIABLE = "AMF_BACKEND"


class Predictor(Protocol):
    """What both back ends offer: (N, 3, S, S) float32 from `prepare` -> (N,) float64 P(atypical)."""

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def predict_views(predictor: Predictor, batch: np.ndarray, tta: str) -> np.ndarray:
    """Mean P(atypical) over the test-time views of a prepared batch, as the container serves it.

    All views go through the ensemble as one batch: one call instead of one per view.
    """
    turned = views(batch, tta)
    return predictor.predict(np.concatenate(turned)).reshape(len(turned), len(batch)).mean(axis=0)


def default_model_dir() -> Path:
    """grand-challenge's uploaded model tarball when it holds a manifest, else the baked-in one."""
    if (GRAND_CHALLENGE_MODEL_DIR / manifest.MANIFEST_NAME).is_file():
        return GRAND_CHALLENGE_MODEL_DIR
    return BAKED_MODEL_DIR


def load_predictor(spec: manifest.Manifest, model_dir: Path, backend: str | None = None) -> Predictor:
    """The ensemble on a back end: ONNX Runtime when the manifest names a graph, else PyTorch.

    `backend` (or the AMF_BACKEND variable when it is None) forces "torch" or "onnx". Each back
    end's module is imported only here: the ONNX path never loads torch or timm.
    """
    backend = backend or os.environ.get(BACKEND_VARIABLE) or "auto"
    if backend not in BACKENDS:
        raise AmfError(f"back end must be one of {BACKENDS}, got {backend!r} (flag or {BACKEND_VARIABLE})")
    if backend == "onnx" or (backend == "auto" and spec.onnx):
        from amf.onnx_runtime import OnnxEnsemble

        return OnnxEnsemble.load(spec, model_dir)
    from amf.ensemble import Ensemble

    return Ensemble.load(spec, model_dir)


def run(
    input_path: Path, output_dir: Path, model_dir: Path, *, batch_size: int = 64, backend: str | None = None
) -> int:
    """Classify every crop under `input_path` and write the predictions to `output_dir`.

    Returns the number of crops classified. Raises AmfError (nothing written) on bad input,
    a bad ensemble or a non-finite prediction.
    """
    spec = manifest.load(model_dir)
    log.info(
        "ensemble %r from %s, test-time views %s, threshold %.4f",
        spec.name,
        model_dir,
        spec.tta,
        spec.threshold.value,
    )
    job = io.discover(input_path)
    ensemble = load_predictor(spec, model_dir, backend)  # heavy imports only after the cheap checks
    names: list[str] = []
    scores: list[np.ndarray] = []
    for pages, batch_names in _batches(job, batch_size):
        names += batch_names
        scores.append(predict_views(ensemble, prepare(pages, spec.input), spec.tta))
    probabilities = np.concatenate(scores)
    if not np.all(np.isfinite(probabilities)):
        raise ModelError(f"{model_dir}: ensemble produced non-finite P(atypical); weights are broken")
    records = io.predictions(probabilities, spec.threshold.value)
    io.write_predictions(output_dir, records, None if job.grand_challenge else names)
    log.info("%d crops from %s -> %s", len(records), input_path, output_dir)
    return len(records)


def _batches(job: io.Job, batch_size: int) -> Iterator[tuple[list[np.ndarray], list[str]]]:
    """Pages of all files in order, `batch_size` at a time, with their names."""
    pages: list[np.ndarray] = []
    names: list[str] = []
    for path in job.files:
        file_pages = io.read_pages(path)
        pages += file_pages
        names += io.page_names(path, job.root, len(file_pages))
        while len(pages) >= batch_size:
            yield pages[:batch_size], names[:batch_size]
            pages, names = pages[batch_size:], names[batch_size:]
    if pages:
        yield pages, names
