"""amf.quantize: the int8 graph is calibrated on crops, checked against fp32, recorded in the
manifest and served on the CPU; a broken one is refused with nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLE_INPUT

from amf import manifest, onnx_runtime, predict, quantize, stacks
from amf.errors import ModelError
from amf.preprocess import prepare


@pytest.fixture(scope="module")
def pages() -> list[np.ndarray]:
    return [page for path in stacks.discover(SAMPLE_INPUT).files for page in stacks.read_pages(path)]


@pytest.fixture
def quantized(exported_ensemble: Path, pages: list[np.ndarray], tmp_path: Path) -> Path:
    model_dir = Path(shutil.copytree(exported_ensemble, tmp_path / "ensemble"))
    quantize.quantize(model_dir, pages[:4], pages[4:])
    return model_dir


def test_int8_graph_is_recorded_and_served_on_the_cpu(quantized: Path, pages, tmp_path: Path) -> None:
    ensemble_manifest = manifest.load(quantized)
    graph = ensemble_manifest.onnx.graphs["int8"]
    assert graph.file == quantize.FILE and graph.sha256 == manifest.sha256_of(quantized / graph.file)
    assert 0 <= graph.max_abs_diff <= quantize.TOLERANCE
    assert set(ensemble_manifest.onnx.graphs) == {"fp32", "fp16", "int8"}  # the others stay
    int8 = onnx_runtime.OnnxEnsemble.load(ensemble_manifest, quantized, [onnx_runtime.CPU])
    assert int8.name.endswith(quantize.FILE)
    ops = {node.op_type for node in onnx.load(str(quantized / graph.file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    batch = prepare(pages, ensemble_manifest.input)
    fp32 = onnx_runtime.OnnxEnsemble(
        onnx_runtime.open_session(quantized / "ensemble.fp32.onnx", [onnx_runtime.CPU])
    )
    difference = np.abs(int8.predict(batch) - fp32.predict(batch))
    assert difference.max() <= quantize.TOLERANCE and difference.max() > 0  # quantised, not a copy
    assert predict.run(SAMPLE_INPUT, tmp_path / "out", quantized) == len(pages)


def test_fp16_stored_weights_become_fp32_initializers_with_the_same_values(exported_ensemble: Path) -> None:
    graph = onnx.load(str(exported_ensemble / "ensemble.fp32.onnx"))
    casts = sum(node.op_type == "Cast" for node in graph.graph.node)
    plain = quantize._plain_fp32(onnx.load(str(exported_ensemble / "ensemble.fp32.onnx")))
    assert sum(node.op_type == "Cast" for node in plain.graph.node) < casts
    assert all(init.data_type != onnx.TensorProto.FLOAT16 for init in plain.graph.initializer)
    names = {init.name for init in plain.graph.initializer}
    assert all(
        name in names or not name.endswith("/fp16") for node in plain.graph.node for name in node.input
    )


def test_an_ensemble_without_fp32_graph_is_refused(fixture_ensemble: Path, pages, tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(fixture_ensemble, tmp_path / "ensemble"))
    with pytest.raises(ModelError, match="no fp32 ONNX graph to quantise; run `amf export-onnx` first"):
        quantize.quantize(model_dir, pages[:4], pages[4:])


def test_a_graph_far_from_fp32_is_refused_with_nothing_written(quantized: Path, pages) -> None:
    before = manifest.load(quantized)
    (quantized / quantize.FILE).unlink()
    with pytest.raises(
        ModelError, match=r"int8 differs from fp32 by .* \(tolerance 0.0\); .* nothing written"
    ):
        quantize.quantize(quantized, pages[:4], pages[4:], tolerance=0.0)
    assert manifest.load(quantized) == before and not (quantized / quantize.FILE).exists()
    assert not list(quantized.glob(".quantize-*"))
