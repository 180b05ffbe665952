"""Finding the input, reading stacks and crops as RGB uint8 pages, writing the predictions.

Three input layouts are accepted:

- grand-challenge: `inputs.json` plus one stack in `images/stacked-histopathology-roi-cropouts/`;
- a single stack or crop file (`.tif`, `.tiff`, `.mha`, `.png`, `.jpg`, ...);
- a plain folder of crop files, searched recursively.

Every page, whatever its pixel format, leaves this module as an (H, W, 3) uint8 array.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from amf.errors import InputError

SLUG = "stacked-histopathology-roi-cropouts"
OUTPUT_NAME = "multiple-mitotic-figure-classification.json"
CSV_NAME = "predictions.csv"
STACK_SUFFIXES = (".tif", ".tiff", ".mha")
CROP_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".mha")
_CONVERT_TO_RGB = ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """What to classify: files in output order, and whether the run is a user's own folder."""

    files: tuple[Path, ...]
    root: Path
    grand_challenge: bool


def discover(input_path: Path) -> Job:
    """Decide the layout of `input_path` and list the image files to read, in order."""
    input_path = Path(input_path)
    if input_path.is_file():
        return Job(files=(input_path,), root=input_path.parent, grand_challenge=False)
    if not input_path.is_dir():
        raise InputError(f"{input_path}: no such file or folder")
    if (input_path / "inputs.json").exists() or (input_path / "images" / SLUG).is_dir():
        return Job(files=(_grand_challenge_stack(input_path),), root=input_path, grand_challenge=True)
    files = sorted(
        (p for p in input_path.rglob("*") if _is_crop_file(p, input_path)),
        key=lambda p: p.relative_to(input_path).as_posix(),
    )
    if not files:
        raise InputError(f"{input_path}: no crops found (looked for {', '.join(CROP_SUFFIXES)})")
    return Job(files=tuple(files), root=input_path, grand_challenge=False)


def _is_crop_file(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return path.is_file() and not hidden and path.suffix.lower() in CROP_SUFFIXES


def _grand_challenge_stack(input_dir: Path) -> Path:
    """The one stack file named by the interface folder of `inputs.json`."""
    inputs_file = input_dir / "inputs.json"
    if not inputs_file.is_file():
        raise InputError(f"{inputs_file}: missing; the grand-challenge layout needs it")
    try:
        entries = json.loads(inputs_file.read_text())
        slugs = [entry["interface"]["slug"] for entry in entries]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{inputs_file}: not a list of input sockets ({error!r})") from None
    if SLUG not in slugs:
        raise InputError(f"{inputs_file}: no input with slug {SLUG!r} (found {slugs})")
    if len(slugs) > 1:
        log.warning("%s: ignoring inputs other than %s: %s", inputs_file, SLUG, slugs)
    entry = entries[slugs.index(SLUG)]
    folder = input_dir / entry["interface"].get("relative_path", f"images/{SLUG}")
    if not folder.is_dir():
        raise InputError(f"{folder}: interface folder named in {inputs_file} is missing")
    stacks = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in STACK_SUFFIXES)
    if not stacks:
        raise InputError(f"{folder}: no stack file ({', '.join(STACK_SUFFIXES)}, any case)")
    if len(stacks) > 1:
        raise InputError(f"{folder}: several stack files, expected one: {[p.name for p in stacks]}")
    return stacks[0]


def read_pages(path: Path) -> list[np.ndarray]:
    """Read every page of an image file as (H, W, 3) uint8 RGB."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".mha":
            pages = _read_sitk(path)
        else:
            pages = _read_pillow(path)
    except InputError:
        raise
    except Exception as error:  # Pillow and SimpleITK raise many types for corrupt files
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    if not pages:
        raise InputError(f"{path}: image has no pages")
    return pages


def _read_pillow(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        pages = []
        for page in ImageSequence.Iterator(image):
            if page.mode in _CONVERT_TO_RGB:
                page = page.convert("RGBA" if "A" in page.mode or "a" in page.mode else "RGB")
            pages.append(to_rgb_uint8(np.asarray(page), source=f"{path} page {len(pages)}"))
    return pages


def _read_sitk(path: Path) -> list[np.ndarray]:
    import SimpleITK as sitk  # only .mha needs it; keeps start-up light for TIFF stacks

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    if image.GetDimension() == 2:
        array = array[None]
    elif image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 2-D image or a 3-D stack, got {image.GetDimension()}-D")
    return [to_rgb_uint8(page, source=f"{path} page {i}") for i, page in enumerate(array)]


def to_rgb_uint8(array: np.ndarray, *, source: str) -> np.ndarray:
    """Gray, gray+alpha, RGB or RGBA of any integer or float type -> (H, W, 3) uint8."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        raise InputError(f"{source}: unsupported page shape {array.shape}")
    array = _to_uint8(array, source=source)
    if array.shape[-1] < 3:
        array = np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _to_uint8(array: np.ndarray, *, source: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{source}: page contains NaN or infinite values")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255
        scaled = np.clip(array.astype(np.float64), 0, top) * (255.0 / top)
        return np.rint(scaled).astype(np.uint8)
    raise InputError(f"{source}: unsupported pixel type {array.dtype}")


def page_names(path: Path, root: Path, count: int) -> list[str]:
    """Names for predictions.csv: the file relative to the input folder, `#page` if several."""
    relative = Path(path).relative_to(root).as_posix()
    return [relative] if count == 1 else [f"{relative}#{i}" for i in range(count)]


def predictions(probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """The contract's objects: class from the threshold, confidence = P(atypical) as a float."""
    values = np.asarray(probabilities, dtype=np.float64)
    in_range = np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    if values.ndim != 1 or not in_range:
        raise ValueError(f"probabilities must be finite values in [0, 1], got {values!r}")
    return [{"class": "atypical" if p >= threshold else "normal", "confidence": float(p)} for p in values]


def write_predictions(output_dir: Path, records: list[dict[str, Any]], names: list[str] | None) -> None:
    """Write the MIDOG JSON (and predictions.csv when `names` is given), each atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if names is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["file", "p_atypical", "class"])
        rows = zip(names, records, strict=True)
        writer.writerows([name, repr(r["confidence"]), r["class"]] for name, r in rows)
        write_text_atomic(output_dir / CSV_NAME, text.getvalue())
    write_json_atomic(output_dir / OUTPUT_NAME, records)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON beside `path` under a temporary name, then rename it into place."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` beside `path` under a temporary name, then rename it into place."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
