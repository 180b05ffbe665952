"""Writing files so that a reader never sees half of one, and a failed run leaves nothing behind.

The container's outputs (the MIDOG JSON, and `predictions.csv` and `report.html` for a user's
folder) are written all or nothing: every file goes to a temporary name beside its target first,
and only when all of them are complete are they renamed into place. Training and evaluation use
the same writers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from amf.errors import OutputError

OUTPUT_NAME = "multiple-mitotic-figure-classification.json"
CSV_NAME = "predictions.csv"
REPORT_NAME = "report.html"
OUTPUT_NAMES = (OUTPUT_NAME, CSV_NAME, REPORT_NAME)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would execute


def predictions(probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """The contract's objects: class from the threshold, confidence = P(atypical) as a float."""
    values = np.asarray(probabilities, dtype=np.float64)
    in_range = np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    if values.ndim != 1 or not in_range:
        raise ValueError(f"probabilities must be finite values in [0, 1], got {values!r}")
    return [{"class": "atypical" if p >= threshold else "normal", "confidence": float(p)} for p in values]


def predictions_csv(names: list[str], records: list[dict[str, Any]]) -> str:
    """`file,p_atypical,class`; file names made printable and never a spreadsheet formula."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "p_atypical", "class"])
    rows = zip(names, records, strict=True)
    writer.writerows([safe_cell(name), repr(r["confidence"]), r["class"]] for name, r in rows)
    return text.getvalue()


def safe_cell(name: str) -> str:
    """A file name as CSV text: undecodable bytes escaped, a leading formula character quoted."""
    name = printable(name)
    return "'" + name if name.startswith(_FORMULA_STARTS) else name


def printable(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 (surrogate escapes) written as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def write_predictions(
    output_dir: Path,
    records: list[dict[str, Any]],
    names: list[str] | None,
    report_html: Iterable[str] | None = None,
) -> None:
    """The MIDOG JSON, plus predictions.csv when `names` is given and report.html when
    `report_html` is (its text, piece by piece), all or nothing."""
    files: dict[str, str | Iterable[str]] = {OUTPUT_NAME: json_text(records)}
    if names is not None:
        files[CSV_NAME] = predictions_csv(names, records)
    if report_html is not None:
        files[REPORT_NAME] = report_html
    write_outputs(output_dir, files)


def write_outputs(output_dir: Path, files: Mapping[str, str | Iterable[str]]) -> None:
    """Write {name: text} into `output_dir` all or nothing, and remove our outputs not in `files`.
    A text may come in pieces (an iterable of str), so that a large one is never held whole.

    Raises OutputError naming the path when the folder cannot be made or written.
    """
    output_dir = Path(output_dir)
    with _output_errors(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in files.items():
            staged.append((_staged(output_dir / name, _text(text)), output_dir / name))
        for tmp, path in staged:
            with _output_errors(path):
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    remove_outputs(output_dir, keep=tuple(files))


def check_output_dir(output_dir: Path) -> None:
    """Prove `output_dir` writable before any work: make it if needed, write and delete a probe."""
    output_dir = Path(output_dir)
    with _output_errors(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    _staged(output_dir / OUTPUT_NAME, _text("")).unlink()


def remove_outputs(output_dir: Path, keep: tuple[str, ...] = (), *, folder: bool = False) -> None:
    """Delete our output files (and temporaries a killed run left) from `output_dir`, if we can.

    A failed run calls this so that no earlier result is mistaken for this run's; with `folder`,
    the folder itself goes too when it is then empty (the run made it).
    """
    if not Path(output_dir).is_dir():
        return
    for path in Path(output_dir).iterdir():
        ours = path.name in OUTPUT_NAMES and path.name not in keep
        leftover = path.name.startswith(tuple(f".{name}." for name in OUTPUT_NAMES))
        if ours or leftover:
            with suppress(OSError):  # read-only output: nothing can be left behind there either
                path.unlink()
    if folder:
        with suppress(OSError):
            Path(output_dir).rmdir()


def _staged(path: Path, save: Callable[[Path], object]) -> Path:
    """What `save(tmp)` writes, complete and on disk in a temporary file beside `path`, readable by
    the container's non-root user; removed again on any failure."""
    with _output_errors(path):
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        with _output_errors(path):
            save(tmp)
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())  # on disk before a rename makes it the file
        os.chmod(tmp, 0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _text(text: str | Iterable[str]) -> Callable[[Path], object]:
    def save(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines([text] if isinstance(text, str) else text)

    return save


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` beside `path` under a temporary name, then rename it into place."""
    return write_with(path, _text(text))


def write_with(path: Path, save: Callable[[Path], object]) -> Path:
    """What `save(tmp)` writes beside `path` (a checkpoint, say), renamed into place when complete;
    on any failure the temporary file goes and an earlier `path` stays as it was."""
    path = Path(path)
    tmp = _staged(path, save)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON beside `path` under a temporary name, then rename it into place."""
    return write_text_atomic(path, json_text(data))


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Dict rows as CSV (dataset tables, metrics, predictions, reports), atomically; the columns
    are `columns`, else the first row's keys."""
    rows = list(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns or (list(rows[0]) if rows else []), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows `write_rows` wrote."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def sha256_of(path: Path) -> str:
    """The digest recorded beside every file another file refers to (weights, graphs, tables)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_text(data: Any) -> str:
    """The one JSON layout of every file we write: indented, newline-terminated."""
    return json.dumps(data, indent=2) + "\n"


def exit_on_terminate() -> None:
    """Make SIGTERM (docker stop, a time limit) raise SystemExit, so that clean-up code runs."""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
