"""The unified dataset table: one row per mitotic figure, from any of three layouts.

Sources, read by one function each:

- MIDOG25 Track 2: the official label CSV (`image_id, filename, coordinateX, coordinateY, Tumor,
  Scanner, Origin, Species, expert1..3, majority`), images named `image_id` in one folder;
- AMi-Br: `AMI-BR.csv` plus `patches/{atypical,normal}/{dataset}_{uid}.png`, optionally
  restricted to the published train or test split (`amibr_train_split.csv`);
- a plain folder per class: `ROOT/{atypical,normal}/**/*.png` (also `amf`/`nmf`, any case).

`unify` concatenates them and drops the AMi-Br rows that MIDOG25 already holds (same slide and
coordinates). The table is written as CSV; splits, training and evaluation all read it back.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from amf import writing
from amf.errors import InputError
from amf.stacks import CROP_SUFFIXES

log = logging.getLogger(__name__)

MIDOG25 = "MIDOG25"
AMIBR_MIDOG21 = "AMi-Br MIDOG21"
AMIBR_TUPAC16 = "AMi-Br TUPAC16"
AMIBR_SPLITS = ("all", "train", "test")
FOLDER_CLASSES = {"atypical": 1, "amf": 1, "normal": 0, "nmf": 0}
BREAST = "human breast cancer"
_MIDOG25_COLUMNS = (
    "image_id",
    "filename",
    "coordinateX",
    "coordinateY",
    "Tumor",
    "Scanner",
    "Species",
    "majority",
)
# MIDOG21 slide number -> scanner (data README); TUPAC16 stands in as its own domain.
_MIDOG21_SCANNERS = ((50, "Hamamatsu XR"), (100, "Hamamatsu S360"), (150, "Aperio CS2"))


@dataclass(frozen=True)
class Sample:
    """One mitotic figure. `slide` is qualified by its archive so groups never collide."""

    id: str
    image: str
    label: int
    cancer_type: str
    slide: str
    scanner: str
    species: str
    source: str
    x: int = -1
    y: int = -1
    votes_atypical: int = 0
    votes_total: int = 0

    @property
    def soft_label(self) -> float:
        """Fraction of experts who called it atypical; the hard label when no votes are known."""
        return self.votes_atypical / self.votes_total if self.votes_total else float(self.label)


COLUMNS = tuple(f.name for f in fields(Sample))
DOMAIN_COLUMNS = ("cancer_type", "scanner", "source", "species")


def read_midog25(csv_path: Path, image_dir: Path | None = None) -> list[Sample]:
    """The official MIDOG25 Track 2 label file; images are `image_dir/image_id`."""
    image_dir = Path(image_dir) if image_dir is not None else Path(csv_path).parent
    samples = []
    seen: Counter = Counter()
    for row in _read_csv(csv_path, _MIDOG25_COLUMNS):
        votes = [row.get(f"expert{i}", "").strip().upper() for i in (1, 2, 3)]
        votes = [v for v in votes if v]
        seen[row["image_id"]] += 1
        repeat = f"#{seen[row['image_id']]}" if seen[row["image_id"]] > 1 else ""
        samples.append(
            Sample(
                id=f"{MIDOG25}/{row['image_id']}{repeat}",
                image=str((image_dir / row["image_id"]).resolve()),
                label=_midog_label(row["majority"], csv_path),
                cancer_type=row["Tumor"],
                slide=f"MIDOG/{row['filename']}",
                scanner=row["Scanner"],
                species=row["Species"],
                source=MIDOG25,
                x=int(float(row["coordinateX"])),
                y=int(float(row["coordinateY"])),
                votes_atypical=votes.count("AMF"),
                votes_total=len(votes),
            )
        )
    repeated = {name: n for name, n in seen.items() if n > 1}
    if repeated:
        log.warning(
            "%s: image_id repeated on several rows %s; all rows kept, as counted officially",
            csv_path,
            repeated,
        )
    return samples


def read_amibr(path: Path, *, split: str = "all", patches: Path | None = None) -> list[Sample]:
    """AMi-Br from its folder (or its `AMI-BR.csv`), optionally only the published train/test split."""
    path = Path(path)
    csv_path = path / "AMI-BR.csv" if path.is_dir() else path
    patches = Path(patches) if patches is not None else csv_path.parent / "patches"
    if split not in AMIBR_SPLITS:
        raise InputError(f"AMi-Br split must be one of {AMIBR_SPLITS}, got {split!r}")
    train_names = _amibr_train_names(csv_path.parent / "amibr_train_split.csv") if split != "all" else None
    samples = []
    for row in _read_csv(csv_path, ("slide", "dataset", "uid", "x", "y", "majority_atypical")):
        name = f"{row['dataset']}_{row['uid']}"
        if train_names is not None and (f"{name}.png" in train_names) != (split == "train"):
            continue
        label = int(_flag(row["majority_atypical"], csv_path))
        votes = [
            _flag(row[f"expert{i}_atypical"], csv_path) for i in (1, 2, 3) if row.get(f"expert{i}_atypical")
        ]
        tupac = row["dataset"] == "TUPAC16"
        samples.append(
            Sample(
                id=f"AMi-Br/{name}",
                image=str((patches / ("atypical" if label else "normal") / f"{name}.png").resolve()),
                label=label,
                cancer_type=BREAST,
                slide=f"{'TUPAC16' if tupac else 'MIDOG'}/{row['slide']}",
                scanner="TUPAC16" if tupac else _midog21_scanner(row["slide"], csv_path),
                species="Human",
                source=AMIBR_TUPAC16 if tupac else AMIBR_MIDOG21,
                x=int(float(row["x"])),
                y=int(float(row["y"])),
                votes_atypical=sum(votes),
                votes_total=len(votes),
            )
        )
    return samples


def read_folder(root: Path) -> list[Sample]:
    """Crops under `root/<class>/` (atypical|normal|amf|nmf); no slide is known, so none is set."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    classes = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(set(classes) - set(FOLDER_CLASSES))
    if unknown or not classes:
        raise InputError(
            f"{root}: class folders must be among {sorted(FOLDER_CLASSES)}, found {sorted(classes)}"
        )
    samples = []
    for name, folder in sorted(classes.items()):
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in CROP_SUFFIXES):
            relative = path.relative_to(root).as_posix()
            samples.append(
                Sample(
                    id=f"{root.name}/{relative}",
                    image=str(path.resolve()),
                    label=FOLDER_CLASSES[name],
                    cancer_type="unknown",
                    slide="",
                    scanner="unknown",
                    species="unknown",
                    source=f"folder {root.name}",
                )
            )
    return samples


def build(
    *,
    midog25: Path | None = None,
    midog25_images: Path | None = None,
    amibr: Path | None = None,
    amibr_split: str = "all",
    folders: Sequence[Path] = (),
) -> list[Sample]:
    """The unified table of the sources given, in this order (MIDOG25 first keeps its rows)."""
    sources = [read_midog25(midog25, midog25_images)] if midog25 else []
    sources += [read_amibr(amibr, split=amibr_split)] if amibr else []
    sources += [read_folder(root) for root in folders]
    if not sources:
        raise InputError("give at least one source: MIDOG25 labels, AMi-Br or a class folder")
    return unify(*sources)


def unify(*sources: Sequence[Sample]) -> list[Sample]:
    """Concatenate sources in order, dropping rows whose (slide, x, y) an earlier source holds."""
    seen: set[tuple[str, int, int]] = set()
    ids: set[str] = set()
    unified: list[Sample] = []
    for source in sources:
        source_keys = set()
        dropped = 0
        for sample in source:
            key = (sample.slide, sample.x, sample.y)
            if sample.x >= 0 and key in seen:
                dropped += 1
                continue
            if sample.id in ids:
                raise InputError(f"sample id {sample.id!r} appears twice; the same source was given twice?")
            ids.add(sample.id)
            source_keys.add(key)
            unified.append(sample)
        if dropped:
            log.info(
                "dropped %d rows already held by an earlier source (same slide and coordinates)", dropped
            )
        seen |= source_keys
    return unified


def check_images(
    samples: Sequence[Sample], *, strict: bool = False, consequence: str = "excluding them"
) -> list[Sample]:
    """The samples whose image file exists; the missing ones are reported with what the caller
    does about them (or fatal if `strict`)."""
    found = [Path(s.image).is_file() for s in samples]
    present = [s for s, ok in zip(samples, found, strict=True) if ok]
    missing = [s for s, ok in zip(samples, found, strict=True) if not ok]
    if missing:
        by_source = Counter(s.source for s in missing)
        examples = ", ".join(s.image for s in missing[:3])
        message = f"{len(missing)} of {len(samples)} image files missing ({dict(by_source)}), e.g. {examples}"
        if strict:
            raise InputError(message)
        log.warning("%s; %s", message, consequence)
    return present


def link_images(samples: Sequence[Sample], folder: Path) -> int:
    """Hard-link (or copy) every sample's crop into `folder` by name: an input for inference.py.

    Not symlinks: inference reads nothing whose real path lies outside its input folder.
    """
    names = Counter(Path(s.image).name for s in samples)
    clashes = [name for name, count in names.items() if count > 1]
    if clashes:
        raise InputError(f"{folder}: several samples share a file name, e.g. {clashes[:3]}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        link = folder / Path(sample.image).name
        link.unlink(missing_ok=True)
        try:
            os.link(sample.image, link)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(sample.image, link)
    return len(samples)


def summary(samples: Iterable[Sample], column: str = "cancer_type") -> list[tuple[str, int, int, int]]:
    """Rows (group, mitoses, atypical, normal) per value of `column`, sorted, then 'Total'."""
    counts: dict[str, Counter] = {}
    for sample in samples:
        counts.setdefault(getattr(sample, column), Counter())[sample.label] += 1
    rows = [(name, c[0] + c[1], c[1], c[0]) for name, c in sorted(counts.items())]
    total = tuple(sum(row[i] for row in rows) for i in (1, 2, 3))
    return rows + [("Total", *total)]


def format_summary(rows: Sequence[tuple[str, int, int, int]], title: str = "Cancer type") -> str:
    """The paper's Table 1 as a Markdown table (AMF % = atypical share)."""
    lines = [f"| {title} | Mitoses | AMF | NMF | AMF % |", "|---|---:|---:|---:|---:|"]
    for name, total, atypical, normal in rows:
        share = 100.0 * atypical / total if total else float("nan")
        lines.append(f"| {name[:1].upper() + name[1:]} | {total} | {atypical} | {normal} | {share:.1f}% |")
    return "\n".join(lines)


def save_table(samples: Sequence[Sample], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return writing.write_rows(path, (asdict(s) for s in samples), COLUMNS)


def load_table(path: Path) -> list[Sample]:
    """Read a table written by `save_table`; integer columns are parsed back."""
    ints = {f.name for f in fields(Sample) if f.type in ("int", int)}
    try:
        return [
            Sample(**{k: int(v) if k in ints else v for k, v in row.items()})
            for row in _read_csv(Path(path), COLUMNS)
        ]
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: not a dataset table written by `amf dataset` ({error})") from None


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such CSV file")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing columns {missing}; found {reader.fieldnames}")
        return list(reader)


def _midog_label(value: str, source: Path) -> int:
    labels = {"AMF": 1, "NMF": 0}
    if value.strip().upper() not in labels:
        raise InputError(f"{source}: majority must be AMF or NMF, got {value!r}")
    return labels[value.strip().upper()]


def _flag(value: str, source: Path) -> bool:
    if value.strip().lower() not in ("true", "false", "1", "0"):
        raise InputError(f"{source}: expected True/False, got {value!r}")
    return value.strip().lower() in ("true", "1")


def _midog21_scanner(slide: str, source: Path) -> str:
    match = re.match(r"(\d+)", slide)
    number = int(match.group(1)) if match else -1
    for last, scanner in _MIDOG21_SCANNERS:
        if 1 <= number <= last:
            return scanner
    raise InputError(f"{source}: MIDOG21 slide {slide!r} is outside 001-150; scanner unknown")


def _amibr_train_names(path: Path) -> set[str]:
    return {row["dataset_uid"] for row in _read_csv(path, ("dataset_uid",))}
