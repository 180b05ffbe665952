"""Check a predictions file against the challenge contract and, optionally, a reference.

Used by test.sh on every container run. Contract (docs/input-output.md): a JSON list with
one {"class", "confidence"} object per input page, class "normal" or "atypical", confidence a
JSON float in [0, 1] (P(atypical)), never NaN; with --model, class must follow that ensemble's
threshold. Against --expected: the same classes and confidences within --atol. With
--differs-from: at least one confidence further than --atol from that file (an override won).

Usage: python test/compare_output.py OUTPUT.json [--input DIR] [--model DIR]
                                     [--expected FILE] [--differs-from FILE] [--atol 1e-4]
Exit status 0 when every check passes, else 1 with the first problem on one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amf.errors import AmfError  # noqa: E402

CLASSES = ("normal", "atypical")
DEFAULT_ATOL = 1e-4


class ContractError(Exception):
    """The predictions break the contract or disagree with the reference."""


def load(path: Path) -> list[dict[str, Any]]:
    """The predictions in `path`; a list of objects, or ContractError."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ContractError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(records, list):
        raise ContractError(f"{path}: expected a JSON list, got {type(records).__name__}")
    return records


def check_contract(records: list[Any], *, pages: int | None = None, threshold: float | None = None) -> None:
    """Keys, class names, float confidences in [0, 1]; the page count and threshold when given."""
    if pages is not None and len(records) != pages:
        raise ContractError(f"{len(records)} predictions for {pages} input pages")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != {"class", "confidence"}:
            raise ContractError(f"item {index}: expected keys class, confidence; got {record!r}")
        label, confidence = record["class"], record["confidence"]
        if label not in CLASSES:
            raise ContractError(f"item {index}: class {label!r} is not one of {CLASSES}")
        if not isinstance(confidence, float) or not math.isfinite(confidence) or not 0 <= confidence <= 1:
            raise ContractError(f"item {index}: confidence {confidence!r} is not a float in [0, 1]")
        if threshold is not None and (label == "atypical") != (confidence >= threshold):
            raise ContractError(f"item {index}: class {label} contradicts threshold {threshold}")


def compare(records: list[dict[str, Any]], expected: list[dict[str, Any]], *, atol: float) -> None:
    """Same length, identical classes, confidences within `atol`."""
    if len(records) != len(expected):
        raise ContractError(f"{len(records)} predictions, expected {len(expected)}")
    for index, (got, want) in enumerate(zip(records, expected, strict=True)):
        if got["class"] != want["class"]:
            raise ContractError(f"item {index}: class {got['class']}, expected {want['class']}")
        if abs(got["confidence"] - want["confidence"]) > atol:
            raise ContractError(
                f"item {index}: confidence {got['confidence']:.8f}, expected {want['confidence']:.8f}"
                f" (tolerance {atol:g})"
            )


def check_differs(records: list[dict[str, Any]], other: list[dict[str, Any]], *, atol: float) -> None:
    """At least one confidence further than `atol` from `other`: the output came from elsewhere."""
    if len(records) == len(other) and all(
        abs(a["confidence"] - b["confidence"]) <= atol for a, b in zip(records, other, strict=True)
    ):
        raise ContractError(f"predictions equal the other file's within {atol:g}")


def count_pages(input_path: Path) -> int:
    """Pages in the input, read the way the product reads them."""
    from amf import stacks

    return sum(len(stacks.read_pages(path)) for path in stacks.discover(input_path).files)


def threshold_of(model_dir: Path) -> float:
    from amf import manifest

    return manifest.load(model_dir).threshold.value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the predictions JSON to check")
    parser.add_argument("--input", type=Path, help="input it was made from (page count)")
    parser.add_argument("--model", type=Path, help="ensemble it was made with (threshold)")
    parser.add_argument("--expected", type=Path, help="reference predictions")
    parser.add_argument("--differs-from", type=Path, help="predictions it must not equal")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"default {DEFAULT_ATOL:g}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = load(args.output)
        pages = count_pages(args.input) if args.input else None
        threshold = threshold_of(args.model) if args.model else None
        check_contract(records, pages=pages, threshold=threshold)
        if args.expected:
            compare(records, load(args.expected), atol=args.atol)
        if args.differs_from:
            check_differs(records, load(args.differs_from), atol=args.atol)
    except (ContractError, AmfError) as error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
