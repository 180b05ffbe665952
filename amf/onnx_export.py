"""Export the ensemble to ONNX, prove the graphs match PyTorch, and record them in the manifest.

One graph holds every fold: it takes a batch of crops from `amf.preprocess.prepare` (any batch
size) and returns the folds' mean P(atypical). Two variants are written:

- fp32, served on the CPU. The fold weights are fp16 safetensors, so every weight is an fp16
  value: the file stores them as fp16 behind Cast nodes (`_exact_fp16_storage`), half the
  size with the same numbers; the session folds the casts and the batch norms when it opens.
- fp16, served by CUDA: the half-precision ensemble traced as PyTorch serves it on a GPU, so the
  fp32 islands that timm keeps on purpose (EfficientViT's linear attention) stay fp32. Input and
  output stay fp32. Saved as traced: on the CPU, ONNX Runtime would insert fp32 casts around
  every fp16 node.

The dynamo exporter traces one fold of each architecture per variant, and the ensemble graph is
that trace repeated with each fold's weights: tracing all the folds at once took about five
times as long, the exporter's cost growing with the size of the graph. Both graphs are saved
unoptimised: a graph pre-optimised by ONNX Runtime (batch norms folded into the convolutions)
opened faster (docs/onnx.md), but its folded weights are no longer fp16 values, so
it was twice the size: a 10-fold ensemble of MobileNets would have needed about 110 MB, over
the 100 MB a file may have on GitHub.

Each variant must match `amf.ensemble.Ensemble` on real crops within its tolerance, or the
export fails with nothing written and the manifest untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from amf import manifest, models, onnx_runtime, stacks, writing
from amf.ensemble import Ensemble
from amf.errors import ModelError
from amf.preprocess import prepare

OPSET = 18
FILES = {"fp32": "ensemble.fp32.onnx", "fp16": "ensemble.fp16.onnx"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Largest |ONNX - PyTorch fp32| allowed on P(atypical): fp32 differs only by kernel rounding (~1e-7
# measured); fp16 keeps ~3 significant digits of every weight and activation.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
INPUT_NAME = "crops"
OUTPUT_NAME = "p_atypical"
_CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)

log = logging.getLogger(__name__)


class _Member(torch.nn.Module):
    """One fold computing in `dtype`, returning its fp32 sigmoid output, (N,).

    Converts `model` in place (dtype, contiguous memory format), as `Ensemble.predict` does, and
    gives every bias-free convolution a zero bias: the exporter would otherwise compute the missing
    bias in the graph, which stops ONNX Runtime from folding the next batch norm into it.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        for layer in model.modules():
            if isinstance(layer, _CONVOLUTIONS) and layer.bias is None:
                layer.bias = torch.nn.Parameter(torch.zeros(layer.out_channels))
        self.model = model.to(dtype=dtype, memory_format=torch.contiguous_format)
        self.dtype = dtype

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(crops.to(self.dtype)).float().reshape(-1))


class _MeanProbability(torch.nn.Module):
    """All folds in one module: the mean of their outputs, (N,). What the TorchScript exporter traces."""

    def __init__(self, members: list[_Member]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(crops) for member in self.members]).mean(0)


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
    if exporter not in manifest.EXPORTERS:
        raise ModelError(f"exporter must be one of {manifest.EXPORTERS}, got {exporter!r}")
    model_dir = Path(model_dir)
    ensemble_manifest = manifest.load(model_dir)
    batch = parity_batch(crops, ensemble_manifest, max_crops)
    ensemble = Ensemble.load(ensemble_manifest, model_dir, device=torch.device("cpu"))
    reference = ensemble.predict(batch)  # before the members change dtype below
    entries = {}
    files = [fold.file for fold in ensemble_manifest.folds]
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=model_dir) as tmp:
        _link_files(model_dir, Path(tmp), files)  # the graphs read their weights from these
        for variant, dtype in DTYPES.items():
            path = Path(tmp) / FILES[variant]
            fold_architectures = [ensemble_manifest.architecture_of(fold) for fold in ensemble_manifest.folds]
            graph, used = _export_graph(ensemble.members, fold_architectures, dtype, batch, exporter, opset)
            data_files = _save(graph, path, model_dir, files)
            entries[variant] = dataclasses.replace(
                _check_parity(path, variant, batch, reference), exporter=used, data_files=data_files
            )
        for variant in entries:
            os.replace(Path(tmp) / FILES[variant], model_dir / FILES[variant])
    record = manifest.OnnxExport(entries, opset=opset, parity_crops=len(batch), versions=_versions())
    updated = dataclasses.replace(ensemble_manifest, onnx=record)
    manifest.save(updated, model_dir)
    log.info("exported %s; max |ONNX - PyTorch| %s", model_dir, _diffs(entries))
    return updated


def parity_batch(crops: Path, ensemble_manifest: manifest.Manifest, max_crops: int) -> np.ndarray:
    """Up to `max_crops` real crops from `crops`, prepared exactly as inference prepares them."""
    pages: list[np.ndarray] = []
    for path in stacks.discover(crops).files:
        pages += stacks.read_pages(path)
        if len(pages) >= max_crops:
            break
    return prepare(pages[:max_crops], ensemble_manifest.input)


def _export_graph(
    members: list[torch.nn.Module],
    fold_architectures: list[str],
    dtype: torch.dtype,
    batch: np.ndarray,
    exporter: str,
    opset: int,
) -> tuple[onnx.ModelProto, str]:
    """The ensemble as one graph computing in `dtype`, with a dynamic batch axis; and the exporter used."""
    example = torch.from_numpy(np.concatenate([batch, batch])[:2])  # batch 2: keeps the axis dynamic
    if exporter != "torchscript":
        try:
            return _export_dynamo(members, fold_architectures, dtype, example, opset), "dynamo"
        except Exception as error:  # the exporter raises many types; any of them means "try the other"
            message = f"dynamo ONNX export failed ({type(error).__name__}: {error})"
            if exporter == "dynamo":
                raise ModelError(message) from None
            log.warning("%s; falling back to TorchScript", message)
    module = _MeanProbability([_Member(member, dtype) for member in members])
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it is deprecated, and we chose it knowingly
        path = Path(tmp) / "ensemble.onnx"
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
        return onnx.load(str(path)), "torchscript"


def _export_dynamo(
    members: list[torch.nn.Module],
    fold_architectures: list[str],
    dtype: torch.dtype,
    example: torch.Tensor,
    opset: int,
) -> onnx.ModelProto:
    """Trace one fold of each architecture with torch.export, then repeat that trace once per fold
    of the architecture with the fold's weights.

    The traced fold is built afresh: a served model may hold inference caches (EfficientViT's
    attention biases) that the trace would bake in as constants of one fold.
    """
    for name in ("onnxscript", "onnx_ir"):  # their INFO lines list every folded constant
        logging.getLogger(name).setLevel(logging.WARNING)
    folds = [_Member(member, dtype) for member in members]
    traces = {}
    for architecture, fold in zip(fold_architectures, folds, strict=True):
        if architecture not in traces:
            template = _Member(models.create(architecture), dtype)
            template.load_state_dict(fold.state_dict())
            traces[architecture] = torch.onnx.export(
                template.eval(),
                (example,),
                dynamo=True,
                opset_version=opset,
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                optimize=False,  # initializers keep the parameters' names; ONNX Runtime optimises the result
                verbose=False,
            ).model_proto
    return _repeat_per_fold([(traces[a], fold) for a, fold in zip(fold_architectures, folds, strict=True)])


def _repeat_per_fold(folds: list[tuple[onnx.ModelProto, _Member]]) -> onnx.ModelProto:
    """One graph running each fold's trace with that fold's weights, outputs averaged."""
    first = folds[0][0]
    graph = onnx.GraphProto(name="ensemble", input=first.graph.input)
    outputs = []
    for index, (traced, fold) in enumerate(folds):
        copy = onnx.compose.add_prefix(_with_weights(traced, fold), f"fold{index}/", rename_inputs=False)
        graph.node.extend(copy.graph.node)
        graph.initializer.extend(copy.graph.initializer)
        outputs.append(copy.graph.output[0].name)
    graph.node.append(onnx.helper.make_node("Mean", outputs, [OUTPUT_NAME], name="mean_over_folds"))
    graph.output.append(first.graph.output[0])
    return onnx.helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)


def _with_weights(traced: onnx.ModelProto, fold: _Member) -> onnx.ModelProto:
    """`traced` with every initializer replaced by the parameter or buffer of `fold` of that name.

    Raises:
        ModelError: an initializer is no parameter or buffer of the fold, or differs in shape or type.
    """
    tensors = dict(fold.named_parameters()) | dict(fold.named_buffers())
    model = onnx.ModelProto()
    model.CopyFrom(traced)
    for initializer in model.graph.initializer:
        if initializer.name not in tensors:
            raise ModelError(f"traced constant {initializer.name!r} is no parameter or buffer of the fold")
        array = tensors[initializer.name].detach().cpu().numpy()
        if (array.shape, array.dtype) != (
            tuple(initializer.dims),
            onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type),
        ):
            raise ModelError(f"traced constant {initializer.name!r} differs from the fold's in shape or type")
        initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
    return model


def _save(graph: onnx.ModelProto, path: Path, model_dir: Path, files: list[str]) -> list[str]:
    """Save `graph` without the exporter's per-node notes (source paths and stack traces), every
    fp32 constant that fp16 holds exactly stored as fp16 behind a Cast, and every weight that a
    fold file holds byte for byte read from that file. Returns the fold files it reads."""
    for node in graph.graph.node:
        del node.metadata_props[:]
    graph = _exact_fp16_storage(graph)
    data_files = _link_fold_weights(graph, model_dir, files)
    onnx.save(graph, str(path))
    path.chmod(0o644)  # readable by the container's non-root user
    return data_files


_FOLD_TENSOR = re.compile(r"^fold(\d+)/(?:model\.)?(.+?)(?:/fp16)?$")  # fold k's parameter, as traced
_SAFETENSORS_TYPES = {"F16": onnx.TensorProto.FLOAT16, "F32": onnx.TensorProto.FLOAT}


def _link_fold_weights(graph: onnx.ModelProto, model_dir: Path, files: list[str]) -> list[str]:
    """Point each initializer that is byte for byte a tensor of its fold's safetensors file at that
    tensor (ONNX external data: file, offset, length), so that the graph holds the network and
    not a second copy of the weights. Others (the zero biases added for export, constants) stay.

    The fold weights are fp16, and so are the fp16 graph's weights and the fp32 graph's stored
    ones (`_exact_fp16_storage`): every weight links. Returns the files linked to."""
    folds = [_safetensors_index(Path(model_dir) / file) for file in files]
    linked = set()
    for initializer in graph.graph.initializer:
        match = _FOLD_TENSOR.match(initializer.name)
        if match is None or int(match.group(1)) >= len(files):
            continue
        k = int(match.group(1))
        data, index = folds[k]
        entry = index.get(match.group(2))
        if entry is None or (_SAFETENSORS_TYPES.get(entry["dtype"]), list(entry["shape"])) != (
            initializer.data_type,
            list(initializer.dims),
        ):
            continue
        start, end = entry["data_offsets"]
        if numpy_helper.to_array(initializer).tobytes() != data[start:end]:
            continue
        initializer.ClearField("raw_data")
        initializer.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", files[k]), ("offset", str(start)), ("length", str(end - start))):
            initializer.external_data.add(key=key, value=value)
        linked.add(files[k])
    return sorted(linked)


def _safetensors_index(path: Path) -> tuple[bytes, dict[str, dict]]:
    """A safetensors file's bytes and its tensors' dtype, shape and absolute byte range."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    for entry in header.values():
        entry["data_offsets"] = [8 + size + offset for offset in entry["data_offsets"]]
    return data, header


def _link_files(source: Path, target: Path, files: list[str]) -> None:
    """Hard links (else copies) of `files` from `source` in `target`, keeping their sub-folders."""
    for file in files:
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / file, target / file)
        except OSError:
            shutil.copyfile(source / file, target / file)


def _exact_fp16_storage(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The fold weights come from fp16 safetensors, so the fp32 graph's weights are fp16 values:
    stored as fp16 and cast back to fp32 as the graph's first nodes (which ONNX Runtime folds
    when a session opens), the file halves and every number stays the same. Constants fp16
    cannot hold exactly stay fp32."""
    casts = []
    for initializer in graph.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        with np.errstate(over="ignore"):  # too large for fp16: inf, which fails the test below
            half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values, equal_nan=True):
            continue
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(half, f"{name}/fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}/fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = [*casts, *graph.graph.node]
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return graph


def _check_parity(path: Path, variant: str, batch: np.ndarray, reference: np.ndarray) -> manifest.OnnxGraph:
    """Run the saved graph as inference will (full batch and one crop) and compare with PyTorch."""
    providers = onnx_runtime.default_providers() if variant == "fp16" else [onnx_runtime.CPU]
    session = onnx_runtime.OnnxEnsemble(onnx_runtime.open_session(path, providers), path.name)
    onnx_runtime.check_signature(session.session, path, batch.shape[-1])
    outputs = np.concatenate([session.predict(batch), session.predict(batch[:1])])
    difference = float(np.max(np.abs(outputs - np.concatenate([reference, reference[:1]]))))
    if not difference <= TOLERANCE[variant]:  # also catches NaN
        raise ModelError(
            f"{path.name}: ONNX differs from PyTorch by {difference:.3g} on {len(batch)} crops "
            f"(tolerance {TOLERANCE[variant]}); nothing written"
        )
    return manifest.OnnxGraph(
        file=FILES[variant],
        sha256=writing.sha256_of(path),
        max_abs_diff=difference,
        tolerance=TOLERANCE[variant],
        checked_on=session.session.get_providers()[0],
    )


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnxscript": metadata.version("onnxscript"),
        "onnxruntime": ort.__version__,
    }


def _diffs(entries: dict[str, manifest.OnnxGraph]) -> str:
    return ", ".join(f"{variant} {graph.max_abs_diff:.2g}" for variant, graph in entries.items())
