"""An int8 graph for the CPU: ONNX Runtime static quantisation of the ensemble's fp32 graph.

QDQ format (quantise/dequantise pairs that ONNX Runtime fuses into integer kernels), weights int8
per output channel, activations uint8 with ranges calibrated (min-max) on real crops under the
test-time views the ensemble is served with. Weights use 7 bits (`reduce_range`): x86 CPUs
without VNNI multiply uint8 by int8 with 16-bit saturating sums, and full-range weights can
overflow them. The graph is checked against the fp32 graph on other crops and recorded in the
manifest as the `int8` variant, which the CPU then serves (amf.onnx_runtime.pick_variant); what
it costs in accuracy is measured out of fold (bench/bench_front.py) and stated in the model card.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import numpy_helper

from amf import manifest, onnx_runtime, writing
from amf.errors import ModelError
from amf.manifest import TTA_VIEWS
from amf.preprocess import dihedral, prepared_batches

log = logging.getLogger(__name__)

FILE = "ensemble.int8.onnx"
# Largest |int8 - fp32| allowed on P(atypical) over the check crops: a sanity bound that catches a
# broken calibration; the accuracy it costs is measured out of fold, not by this number.
TOLERANCE = 0.1
CALIBRATION_BATCH = 32


def quantize(
    model_dir: Path, calibration: list[np.ndarray], check: list[np.ndarray], tolerance: float = TOLERANCE
) -> manifest.Manifest:
    """Write `model_dir`'s fp32 graph as an int8 graph calibrated on `calibration` crops, check it
    on `check` crops, and add it to the manifest. A larger `tolerance` is for measuring what int8
    costs in accuracy (bench/bench_front.py), not for serving.

    Raises:
        ModelError: no fp32 graph, or the int8 graph differs from it by more than `tolerance`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration or not check:
        raise ModelError("quantisation needs calibration crops and other crops to check it on")
    model_dir = Path(model_dir)
    ensemble_manifest = manifest.load(model_dir)
    fp32 = ensemble_manifest.onnx.graphs.get("fp32") if ensemble_manifest.onnx else None
    if fp32 is None:
        raise ModelError(f"{model_dir}: no fp32 ONNX graph to quantise; run `amf export-onnx` first")
    manifest.check_sha256(model_dir / fp32.file, fp32.sha256)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=model_dir) as tmp:
        plain, prepared, out = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / FILE
        graph = onnx.load(str(model_dir / fp32.file))  # weights read from the fold files
        onnx.external_data_helper.convert_model_from_external_data(graph)  # the int8 graph holds its own
        onnx.save(_plain_fp32(graph), str(plain))
        quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)  # it fails on dynamo Constants
        quantize_static(
            str(prepared),
            str(out),
            _Reader(calibration, ensemble_manifest),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        out.chmod(0o644)
        graph = _check(out, model_dir / fp32.file, check, ensemble_manifest, tolerance)
        os.replace(out, model_dir / FILE)
    graphs = {**ensemble_manifest.onnx.graphs, "int8": graph}
    updated = dataclasses.replace(
        ensemble_manifest, onnx=dataclasses.replace(ensemble_manifest.onnx, graphs=graphs)
    )
    manifest.save(updated, model_dir)
    log.info(
        "%s: int8 graph calibrated on %d crops; max |int8 - fp32| %.3g on %d others",
        model_dir, len(calibration), graph.max_abs_diff, len(check),
    )  # fmt: skip
    return updated


def _plain_fp32(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with fp16-stored weights (amf.onnx_export) as fp32 initializers again: the
    quantiser calibrates and quantises initializers, not the outputs of Cast nodes."""
    initializers = {init.name: init for init in graph.graph.initializer}
    kept = []
    for node in graph.graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if source is None or source.data_type != onnx.TensorProto.FLOAT16:
            kept.append(node)
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        source.CopyFrom(numpy_helper.from_array(values, node.output[0]))
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    return graph


class _Reader:
    """ONNX Runtime's calibration data reader: prepared batches of the calibration crops, each
    crop under one of the served views in turn (the graph sees every view when served)."""

    def __init__(self, crops: list[np.ndarray], ensemble_manifest: manifest.Manifest) -> None:
        self._batches = self._generate(crops, ensemble_manifest)

    @staticmethod
    def _generate(
        crops: list[np.ndarray], ensemble_manifest: manifest.Manifest
    ) -> Iterator[dict[str, np.ndarray]]:
        served = TTA_VIEWS[ensemble_manifest.tta]
        for index, batch in enumerate(prepared_batches(crops, ensemble_manifest.input, CALIBRATION_BATCH)):
            yield {"crops": dihedral(batch, served[index % len(served)], axes=(-2, -1))}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _check(
    int8: Path, fp32: Path, crops: list[np.ndarray], ensemble_manifest: manifest.Manifest, tolerance: float
) -> manifest.OnnxGraph:
    """The int8 graph against the fp32 graph on `crops`, as the CPU serves both."""
    sessions = [
        onnx_runtime.OnnxEnsemble(onnx_runtime.open_session(p, [onnx_runtime.CPU]), p.name)
        for p in (int8, fp32)
    ]
    onnx_runtime.check_signature(sessions[0].session, int8, ensemble_manifest.input.size)
    scores = [
        np.concatenate([s.predict(b) for b in prepared_batches(crops, ensemble_manifest.input, 64)])
        for s in sessions
    ]
    difference = float(np.max(np.abs(scores[0] - scores[1])))
    if not difference <= tolerance:  # also catches NaN
        raise ModelError(
            f"{int8.name}: int8 differs from fp32 by {difference:.3g} on {len(crops)} crops "
            f"(tolerance {tolerance}); the calibration crops may not be crops; nothing written"
        )
    return manifest.OnnxGraph(
        file=FILE,
        sha256=writing.sha256_of(int8),
        max_abs_diff=difference,
        tolerance=tolerance,
        checked_on=f"{onnx_runtime.CPU} against the fp32 graph",
        exporter="onnxruntime.quantization: static, QDQ, per-channel int8 weights (7-bit), uint8 min-max",
    )
