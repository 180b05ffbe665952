"""One run of the classifier: input -> preprocess -> ensemble -> output, nothing more."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from amf import io, manifest
from amf.errors import ModelError
from amf.preprocess import prepare

log = logging.getLogger(__name__)

GRAND_CHALLENGE_MODEL_DIR = Path("/opt/ml/model")
BAKED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


def default_model_dir() -> Path:
    """grand-challenge's uploaded model tarball when it holds a manifest, else the baked-in one."""
    if (GRAND_CHALLENGE_MODEL_DIR / manifest.MANIFEST_NAME).is_file():
        return GRAND_CHALLENGE_MODEL_DIR
    return BAKED_MODEL_DIR


def run(input_path: Path, output_dir: Path, model_dir: Path, *, batch_size: int = 64) -> int:
    """Classify every crop under `input_path` and write the predictions to `output_dir`.

    Returns the number of crops classified. Raises AmfError (nothing written) on bad input,
    a bad ensemble or a non-finite prediction.
    """
    spec = manifest.load(model_dir)
    job = io.discover(input_path)
    from amf.ensemble import Ensemble  # torch loads only after the cheap checks have passed

    ensemble = Ensemble.load(spec, model_dir)
    names: list[str] = []
    scores: list[np.ndarray] = []
    for pages, batch_names in _batches(job, batch_size):
        names += batch_names
        scores.append(ensemble.predict(prepare(pages, spec.input)))
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
