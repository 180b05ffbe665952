"""The ensemble manifest: the one source of truth for how an ensemble is built and served.

`manifest.json` lives next to the fold weights. It names the timm architecture, the input
specification used by `amf.preprocess.prepare`, the fold files, how fold outputs are reduced and
the decision threshold with how it was chosen. Training writes it; inference only reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from amf.errors import ModelError
from amf.writing import sha256_of, write_json_atomic

MANIFEST_NAME = "manifest.json"
FORMAT = "amf-ensemble/1"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
REDUCTIONS = ("mean_probability",)
# written by amf.onnx_export (fp32, fp16) and amf.quantize (int8), served by amf.onnx_runtime
ONNX_VARIANTS = ("fp32", "fp16", "int8")
EXPORTERS = ("auto", "dynamo", "torchscript")  # how amf.onnx_export traces; auto: dynamo, else torchscript
# Test-time augmentation: the symmetries of the square (amf.preprocess.dihedral) whose
# predictions are averaged, by the container and by the out-of-fold scores behind the threshold.
TTA_VIEWS = {"none": (0,), "mirror": (0, 4), "flips": (0, 2, 4, 6), "dihedral": tuple(range(8))}
MIN_SIZE, MAX_SIZE = 16, 1024  # input.size: a crop network's input, not a whole slide
MAX_MANIFEST_BYTES = 1 << 20
_REQUIRED = ("format", "architecture", "input", "folds", "threshold")
_OPTIONAL = ("name", "description", "reduction", "tta", "positive_class", "onnx", "provenance")


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: a square RGB crop of `size` px, normalised by mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class Fold:
    """One member of the ensemble: a safetensors file relative to the manifest's folder, and its
    timm architecture when it is not the manifest's (an ensemble that mixes networks)."""

    file: str
    sha256: str | None = None
    architecture: str | None = None


@dataclass(frozen=True)
class Threshold:
    """P(atypical) >= value is called atypical; `method` says how the value was chosen."""

    value: float
    method: str


@dataclass(frozen=True)
class OnnxGraph:
    """One exported graph (relative to the manifest's folder) and its parity check against PyTorch."""

    file: str
    sha256: str | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    checked_on: str | None = None
    exporter: str | None = None
    data_files: tuple[str, ...] = ()  # fold files the graph reads its weights from (ONNX external data)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_files", tuple(self.data_files))  # a list when read from JSON


@dataclass(frozen=True)
class OnnxExport:
    """The ensemble's ONNX graphs by variant (ONNX_VARIANTS) and how they were made.

    In manifest.json the variants, opset and parity_crops sit beside the exporting versions
    ({"fp32": {...}, "fp16": {...}, "opset": 18, "torch": "2.14.1", ...}).
    """

    graphs: dict[str, OnnxGraph]
    opset: int | None = None
    parity_crops: int | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        graphs = {variant: _graph_dict(graph) for variant, graph in self.graphs.items()}
        made = {"opset": self.opset, "parity_crops": self.parity_crops}
        return {**graphs, **{k: v for k, v in made.items() if v is not None}, **self.versions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnnxExport:
        """Raises TypeError or ValueError on a malformed entry (from_dict names the manifest)."""
        graphs = {variant: OnnxGraph(**data[variant]) for variant in ONNX_VARIANTS if variant in data}
        versions = {k: str(v) for k, v in data.items() if k not in (*ONNX_VARIANTS, "opset", "parity_crops")}
        return cls(graphs, data.get("opset"), data.get("parity_crops"), versions)


def _graph_dict(graph: OnnxGraph) -> dict[str, Any]:
    """A graph's entry; `data_files` only where it has some (older manifests re-save unchanged)."""
    data = asdict(graph)
    if not graph.data_files:
        del data["data_files"]
    else:
        data["data_files"] = list(graph.data_files)
    return data


@dataclass(frozen=True)
class Manifest:
    architecture: str
    input: InputSpec
    folds: tuple[Fold, ...]
    threshold: Threshold
    name: str = ""
    description: str = ""
    reduction: str = "mean_probability"
    tta: str = "none"
    positive_class: str = "atypical"
    onnx: OnnxExport | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # free-form record; serving never reads it
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnx"] = self.onnx.to_dict() if self.onnx else None
        for fold in data["folds"]:
            if fold["architecture"] is None:
                del fold["architecture"]
        return data

    def architecture_of(self, fold: Fold) -> str:
        return fold.architecture or self.architecture

    @property
    def architectures(self) -> tuple[str, ...]:
        """The distinct networks of the ensemble, in fold order."""
        return tuple(dict.fromkeys(self.architecture_of(fold) for fold in self.folds))


def create(
    model_dir: Path,
    files: Sequence[str],
    fold_architectures: str | Sequence[str],
    *,
    input: InputSpec,
    threshold: Threshold,
    **details: Any,
) -> Manifest:
    """The one way a manifest is made in code (training, assembly, fixtures, benchmarks).

    Each fold file (relative to `model_dir`) is hashed; `fold_architectures` is one name or one per
    file, and a fold names its own only where it differs from the first. `details` are the
    optional fields (name, description, tta, onnx, provenance). The result passes the checks a
    loaded manifest passes.
    """
    names = (
        [fold_architectures] * len(files) if isinstance(fold_architectures, str) else list(fold_architectures)
    )
    if len(names) != len(files) or not all(_is_relative_file(file) for file in files):
        raise ModelError(f"{model_dir}: {_FOLD_FILE}, one architecture each; got {files}, {names}")
    folds = tuple(
        Fold(file, sha256_of(Path(model_dir) / file), None if name == names[0] else name)
        for file, name in zip(files, names, strict=True)
    )
    manifest = Manifest(names[0] if names else "", input, folds, threshold, **details)
    _check(manifest, str(model_dir))
    return manifest


def check_sha256(path: Path, expected: str | None) -> None:
    """Refuse a file whose sha256 is not the manifest's (no check when none is recorded)."""
    if expected and sha256_of(path) != expected:
        raise ModelError(f"{path}: sha256 differs from the manifest's; wrong or damaged file")


def from_dict(data: dict[str, Any], *, source: str = "manifest") -> Manifest:
    """Validate a parsed manifest; every error names `source` and the offending key."""
    if not isinstance(data, dict):
        raise ModelError(f"{source}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ModelError(
            f"{source}: missing keys {missing}, unknown keys {unknown}; "
            f"allowed: {list(_REQUIRED + _OPTIONAL)}"
        )
    if data["format"] != FORMAT:
        raise ModelError(f"{source}: format {data['format']!r} is not {FORMAT!r}")
    problems = _type_problems(data)
    if problems:
        raise ModelError(f"{source}: " + "; ".join(problems))
    try:
        manifest = Manifest(
            architecture=data["architecture"],
            input=_input_spec(data["input"]),
            folds=tuple(Fold(**fold) for fold in data["folds"]),
            threshold=Threshold(**data["threshold"]),
            **{key: data[key] for key in _OPTIONAL if key in data and key != "onnx"},
            onnx=OnnxExport.from_dict(data["onnx"]) if data.get("onnx") is not None else None,
        )
    except (TypeError, ValueError) as error:
        raise ModelError(f"{source}: malformed entry ({error})") from None
    _check(manifest, source)
    return manifest


def _type_problems(data: dict[str, Any]) -> list[str]:
    """JSON types and finite numbers, checked before anything is built from them."""
    input_data, threshold, folds = data["input"], data["threshold"], data["folds"]
    checks = [
        (isinstance(data["architecture"], str), "architecture must be a string"),
        (isinstance(input_data, dict), "input must be an object"),
        (isinstance(threshold, dict), "threshold must be an object"),
        (
            isinstance(folds, list) and all(isinstance(f, dict) for f in folds),
            "folds must be a list of objects",
        ),
    ]
    checks += [(isinstance(data.get(key, ""), str), f"{key} must be a string") for key in _STRINGS]
    checks += [(isinstance(data.get("provenance", {}), dict), "provenance must be an object")]
    checks += [(False, problem) for problem in _onnx_problems(data.get("onnx"))]
    if isinstance(input_data, dict):
        checks += [
            (_is_int(input_data.get("size")), "input.size must be an integer"),
            (_are_numbers(input_data.get("mean")), "input.mean must be a list of finite numbers"),
            (_are_numbers(input_data.get("std")), "input.std must be a list of finite numbers"),
            (isinstance(input_data.get("interpolation", ""), str), "input.interpolation must be a string"),
        ]
    if isinstance(threshold, dict):
        checks += [
            (_are_numbers([threshold.get("value")]), "threshold.value must be a finite number"),
            (isinstance(threshold.get("method"), str), "threshold.method must be a string"),
        ]
    if isinstance(folds, list):
        checks += [(all(_is_relative_file(f.get("file")) for f in folds if isinstance(f, dict)), _FOLD_FILE)]
        checks += [(all(_is_sha256(f.get("sha256")) for f in folds if isinstance(f, dict)), _SHA256)]
        checks += [
            (
                all(isinstance(f.get("architecture", ""), str) for f in folds if isinstance(f, dict)),
                "folds[].architecture must be a string",
            )
        ]
    return [message for ok, message in checks if not ok]


_STRINGS = ("name", "description", "reduction", "tta", "positive_class")
_FOLD_FILE = "folds[].file must be a relative path inside the ensemble folder"
_SHA256 = "folds[].sha256 must be 64 hex digits or null"
_ONNX_FILE = f"onnx.{'/'.join(ONNX_VARIANTS)} must each be an object whose 'file' is a relative path"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _are_numbers(values: Any) -> bool:
    numbers = isinstance(values, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
    return bool(numbers)


def _is_relative_file(name: Any) -> bool:
    """A file name the manifest may point at: relative, no '..', so it stays in its folder."""
    path = PurePosixPath(name) if isinstance(name, str) and name else None
    return path is not None and not path.is_absolute() and ".." not in path.parts


def _is_sha256(value: Any) -> bool:
    hex_digits = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return value is None or hex_digits


def _input_spec(data: dict[str, Any]) -> InputSpec:
    return InputSpec(
        size=data["size"],
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        interpolation=data.get("interpolation", "bicubic"),
    )


def _check(manifest: Manifest, source: str) -> None:
    spec = manifest.input
    problems = []
    if not MIN_SIZE <= spec.size <= MAX_SIZE:
        problems.append(f"input.size must be in {MIN_SIZE}..{MAX_SIZE}, got {spec.size}")
    if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
        problems.append("input.mean and input.std need 3 values each, std > 0")
    if spec.interpolation not in INTERPOLATIONS:
        problems.append(f"input.interpolation must be one of {INTERPOLATIONS}")
    if not manifest.folds:
        problems.append("folds is empty")
    if len({fold.file for fold in manifest.folds}) != len(manifest.folds):
        problems.append("folds lists a file twice")
    if not 0.0 <= manifest.threshold.value <= 1.0:
        problems.append(f"threshold.value must be in [0, 1], got {manifest.threshold.value}")
    if manifest.reduction not in REDUCTIONS:
        problems.append(f"reduction must be one of {REDUCTIONS}")
    if manifest.tta not in TTA_VIEWS:
        problems.append(f"tta must be one of {list(TTA_VIEWS)}, got {manifest.tta!r}")
    if manifest.positive_class != "atypical":
        problems.append("positive_class must be 'atypical'")
    if manifest.onnx is not None and not manifest.onnx.graphs:
        problems.append(f"onnx names no graph; expected at least one of {ONNX_VARIANTS}")
    if manifest.onnx is not None and not all(
        _is_relative_file(g.file) for g in manifest.onnx.graphs.values()
    ):
        problems.append(_ONNX_FILE)
    if problems:
        raise ModelError(f"{source}: " + "; ".join(problems))


def _onnx_problems(onnx: Any) -> list[str]:
    """The onnx entry maps variants (fp32, fp16) to {"file": ..., "sha256": ...}, beside metadata."""
    if onnx is None:
        return []
    if not isinstance(onnx, dict):
        return [f"onnx must be an object or null, got {type(onnx).__name__}"]
    graphs = [onnx[key] for key in ONNX_VARIANTS if key in onnx]
    if not graphs:
        return [f"onnx names no graph; expected at least one of {ONNX_VARIANTS}"]
    if not all(isinstance(graph, dict) and _is_relative_file(graph.get("file")) for graph in graphs):
        return [_ONNX_FILE]
    data_files = [graph.get("data_files", []) for graph in graphs]
    if not all(isinstance(files, list) and all(map(_is_relative_file, files)) for files in data_files):
        return ["onnx.<variant>.data_files must be a list of relative paths"]
    return []


def load(model_dir: Path) -> Manifest:
    """Read and validate `model_dir/manifest.json` and check that every fold file exists."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"{path}: no ensemble manifest here")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ModelError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:
        raise ModelError(f"{path}: not valid JSON ({type(error).__name__}: {error})") from None
    manifest = from_dict(data, source=str(path))
    for fold in manifest.folds:
        if not (path.parent / fold.file).is_file():
            raise ModelError(f"{path.parent / fold.file}: fold weight file listed in {path} is missing")
    return manifest


def save(manifest: Manifest, model_dir: Path) -> Path:
    """Write the manifest atomically, so a reader never sees half a file."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(model_dir / MANIFEST_NAME, manifest.to_dict())
