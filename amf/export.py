"""Export the ensemble to ONNX, prove the graphs match PyTorch, and record them in the manifest.

One graph holds every fold: it takes a batch of crops from `amf.preprocess.prepare` (any batch
size) and returns the folds' mean P(atypical). Two variants are written:

- fp32, served on the CPU. Its weights stay fp32: the exporter folds batch norms into the
  convolutions, so rounding them to fp16 would move the outputs.
- fp16, served by CUDA: the half-precision ensemble traced as PyTorch serves it on a GPU, so the
  fp32 islands that timm keeps on purpose (EfficientViT's linear attention) stay fp32. Half the
  size; input and output stay fp32.

Each variant must match `amf.ensemble.Ensemble` on real crops within its tolerance, or the
export fails with nothing written and the manifest untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from amf import io, manifest, onnx_runtime
from amf.ensemble import Ensemble
from amf.errors import ModelError
from amf.preprocess import prepare

OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
FILES = {"fp32": "ensemble.fp32.onnx", "fp16": "ensemble.fp16.onnx"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Largest |ONNX - PyTorch fp32| allowed on P(atypical): fp32 differs only by kernel rounding (~1e-7
# measured); fp16 keeps ~3 significant digits of every weight and activation.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
INPUT_NAME = "crops"
OUTPUT_NAME = "p_atypical"

log = logging.getLogger(__name__)


class _MeanProbability(torch.nn.Module):
    """All folds in one module computing in `dtype`: the mean of their fp32 sigmoid outputs, (N,).

    Converts `members` in place (dtype, contiguous memory format), as `Ensemble.predict` does.
    """

    def __init__(self, members: list[torch.nn.Module], dtype: torch.dtype) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(
            m.to(dtype=dtype, memory_format=torch.contiguous_format) for m in members
        )
        self.dtype = dtype

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.dtype)
        return torch.stack([torch.sigmoid(m(x).float().reshape(-1)) for m in self.members]).mean(0)


def export(
    model_dir: Path, crops: Path, *, exporter: str = "auto", max_crops: int = 16, opset: int = OPSET
) -> manifest.Manifest:
    """Write the ensemble of `model_dir` as ONNX graphs and add them to its manifest.

    Args:
        model_dir: folder with manifest.json and the fold weights.
        crops: stack, crop or folder of real crops for the parity check (any input layout).
        exporter: "dynamo" (torch.export), "torchscript", or "auto": dynamo, falling back to
            TorchScript if it fails.
        max_crops: at most this many crops are compared.
        opset: ONNX opset of the graph.

    Returns:
        The updated manifest, whose `onnx` entry names the graphs, their sha256 and measured
        differences.

    Raises:
        ModelError: export failed, or a graph differs from PyTorch by more than its tolerance.
    """
    if exporter not in EXPORTERS:
        raise ModelError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model_dir = Path(model_dir)
    spec = manifest.load(model_dir)
    batch = parity_batch(crops, spec, max_crops)
    ensemble = Ensemble.load(spec, model_dir, device=torch.device("cpu"))
    reference = ensemble.predict(batch)  # before the members change dtype below
    entries = {}
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=model_dir) as tmp:
        for variant, dtype in DTYPES.items():
            path = Path(tmp) / FILES[variant]
            used = _export_graph(_MeanProbability(ensemble.members, dtype), batch, path, exporter, opset)
            path.chmod(0o644)  # readable by the container's non-root user
            entries[variant] = {**_check_parity(path, variant, batch, reference), "exporter": used}
        for variant in entries:
            os.replace(Path(tmp) / FILES[variant], model_dir / FILES[variant])
    record = {**entries, "opset": opset, "parity_crops": len(batch), **_versions()}
    updated = dataclasses.replace(spec, onnx=record)
    manifest.save(updated, model_dir)
    log.info("exported %s; max |ONNX - PyTorch| %s", model_dir, _diffs(entries))
    return updated


def parity_batch(crops: Path, spec: manifest.Manifest, max_crops: int) -> np.ndarray:
    """Up to `max_crops` real crops from `crops`, prepared exactly as inference prepares them."""
    pages: list[np.ndarray] = []
    for path in io.discover(crops).files:
        pages += io.read_pages(path)
        if len(pages) >= max_crops:
            break
    return prepare(pages[:max_crops], spec.input)


def _export_graph(module: torch.nn.Module, batch: np.ndarray, path: Path, exporter: str, opset: int) -> str:
    """Trace `module` into one graph file with a dynamic batch axis; return the exporter used."""
    example = torch.from_numpy(np.concatenate([batch, batch])[:2])  # batch 2: keeps the axis dynamic
    if exporter != "torchscript":
        try:
            _export_dynamo(module.eval(), example, path, opset)
            return "dynamo"
        except Exception as error:  # the exporter raises many types; any of them means "try the other"
            message = f"dynamo ONNX export failed ({type(error).__name__}: {error})"
            if exporter == "dynamo":
                raise ModelError(message) from None
            log.warning("%s; falling back to TorchScript", message)
    with warnings.catch_warnings():  # it is deprecated, and we chose it knowingly
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return "torchscript"


def _export_dynamo(module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    for name in ("onnxscript", "onnx_ir"):  # their INFO lines list every folded constant
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        external_data=False,
        verbose=False,
    )


def _check_parity(path: Path, variant: str, batch: np.ndarray, reference: np.ndarray) -> dict:
    """Run the saved graph as inference will (full batch and one crop) and compare with PyTorch."""
    providers = onnx_runtime.default_providers() if variant == "fp16" else [onnx_runtime.CPU]
    session = onnx_runtime.OnnxEnsemble(onnx_runtime.open_session(path, providers))
    outputs = np.concatenate([session.predict(batch), session.predict(batch[:1])])
    difference = float(np.max(np.abs(outputs - np.concatenate([reference, reference[:1]]))))
    if not difference <= TOLERANCE[variant]:  # also catches NaN
        raise ModelError(
            f"{path.name}: ONNX differs from PyTorch by {difference:.3g} on {len(batch)} crops "
            f"(tolerance {TOLERANCE[variant]}); nothing written"
        )
    return {
        "file": FILES[variant],
        "sha256": manifest.sha256_of(path),
        "max_abs_diff": difference,
        "tolerance": TOLERANCE[variant],
        "checked_on": session.session.get_providers()[0],
    }


def _versions() -> dict[str, str]:
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnxscript": metadata.version("onnxscript"),
        "onnxruntime": onnxruntime.__version__,
    }


def _diffs(entries: dict[str, dict]) -> str:
    return ", ".join(f"{variant} {entry['max_abs_diff']:.2g}" for variant, entry in entries.items())
