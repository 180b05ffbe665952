"""amf.onnx_runtime, and the container run end to end through both back ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT
from onnx import TensorProto, helper

from amf import manifest, onnx_runtime, predict, stacks, writing
from amf.errors import ModelError
from amf.manifest import Fold, InputSpec, Manifest, OnnxExport, Threshold

SPEC = InputSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _mean_sigmoid_graph(path: Path) -> None:
    """A stand-in ensemble graph: P = sigmoid(mean of each crop), batch axis dynamic."""
    crops = helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["batch", 3, 16, 16])
    output = helper.make_tensor_value_info("p_atypical", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["crops", "axes"], ["mean"], keepdims=0),
        helper.make_node("Sigmoid", ["mean"], ["p_atypical"]),
    ]
    graph = helper.make_graph(nodes, "mean_sigmoid", [crops], [output], [axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


def _graph(path: Path, crops: list, outputs: dict[str, tuple[int, list]], nodes: list) -> None:
    """A small graph with input `crops` (float, shape `crops`) and the given float/int outputs."""
    inputs = [helper.make_tensor_value_info("crops", TensorProto.FLOAT, crops)]
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    hw = helper.make_tensor("hw", TensorProto.INT64, [2], [-2, -1])
    values = [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in outputs.items()]
    graph = helper.make_graph(nodes, "hostile", inputs, values, [axes, hw])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


def _reduce(output: str = "mean", **attributes: int) -> onnx.NodeProto:
    return helper.make_node("ReduceMean", ["crops", "axes"], [output], **attributes)


# Each graph is wrong in one way; `load` must refuse it before inference, naming the file.
_BAD_SIGNATURES = {
    "input rank 3": (
        ["batch", 3, 16],
        {"p": (TensorProto.FLOAT, ["batch"])},
        [helper.make_node("ReduceMean", ["crops", "hw"], ["p"], keepdims=0)],
        r"input is tensor\(float\) \['batch', 3, 16\], expected tensor\(float\) \[N, 3, 16, 16\]",
    ),
    "input size 32 for a 16 px manifest": (
        ["batch", 3, 32, 32],
        {"p": (TensorProto.FLOAT, ["batch"])},
        [_reduce("p", keepdims=0)],
        r"input is tensor\(float\) \['batch', 3, 32, 32\]",
    ),
    "integer output": (
        ["batch", 3, 16, 16],
        {"p": (TensorProto.INT64, ["batch"])},
        [_reduce(keepdims=0), helper.make_node("Cast", ["mean"], ["p"], to=TensorProto.INT64)],
        r"output is tensor\(int64\) \['batch'\], expected a float \[N\] or \[N, 1\]",
    ),
    "output of shape [N, 3]": (
        ["batch", 3, 16, 16],
        {"p": (TensorProto.FLOAT, ["batch", 3])},
        [helper.make_node("ReduceMean", ["crops", "hw"], ["p"], keepdims=0)],
        r"output is tensor\(float\) \['batch', 3\]",
    ),
    "two outputs": (
        ["batch", 3, 16, 16],
        {"p": (TensorProto.FLOAT, ["batch"]), "q": (TensorProto.FLOAT, ["batch"])},
        [_reduce("p", keepdims=0), helper.make_node("Identity", ["p"], ["q"])],
        "has 1 inputs and 2 outputs, expected one of each",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_SIGNATURES))
def test_graph_with_wrong_signature_is_refused_at_load(tmp_path: Path, case: str) -> None:
    crops, outputs, nodes, message = _BAD_SIGNATURES[case]
    _graph(tmp_path / "bad.onnx", crops, outputs, nodes)
    with pytest.raises(ModelError, match=rf"bad\.onnx: ONNX graph {message}") as error:
        onnx_runtime.OnnxEnsemble.load(
            _manifest({"fp32": {"file": "bad.onnx"}}), tmp_path, [onnx_runtime.CPU]
        )
    assert "\n" not in str(error.value)


def test_output_of_shape_n_by_1_is_accepted(tmp_path: Path) -> None:
    _graph(
        tmp_path / "column.onnx",
        ["batch", 3, 16, 16],
        {"p": (TensorProto.FLOAT, ["batch", 1])},
        [
            _reduce(keepdims=0),
            helper.make_node("Sigmoid", ["mean"], ["sigmoid"]),
            helper.make_node("Unsqueeze", ["sigmoid", "one"], ["p"]),
        ],
    )
    model = onnx.load(str(tmp_path / "column.onnx"))
    model.graph.initializer.append(helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    onnx.save(model, str(tmp_path / "column.onnx"))
    ensemble = onnx_runtime.OnnxEnsemble.load(
        _manifest({"fp32": {"file": "column.onnx"}}), tmp_path, [onnx_runtime.CPU]
    )
    batch = np.zeros((3, 3, 16, 16), np.float32)
    np.testing.assert_allclose(ensemble.predict(batch), [0.5, 0.5, 0.5])


def _scaled_graph(path: Path, scale: float, start: int = 0) -> onnx_runtime.OnnxEnsemble:
    """A graph with the right signature whose output is `scale` * mean(crop), from crop `start` on."""
    nodes = [
        _reduce(keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Slice", ["scaled", "start", "end"], ["p"]),
    ]
    _graph(path, ["batch", 3, 16, 16], {"p": (TensorProto.FLOAT, ["batch"])}, nodes)
    model = onnx.load(str(path))
    model.graph.initializer.extend(
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("start", TensorProto.INT64, [1], [start]),
            helper.make_tensor("end", TensorProto.INT64, [1], [2**62]),
        ]
    )
    onnx.save(model, str(path))
    ensemble_manifest = _manifest({"fp32": {"file": path.name}})
    return onnx_runtime.OnnxEnsemble.load(ensemble_manifest, path.parent, [onnx_runtime.CPU])


@pytest.mark.parametrize(
    ("scale", "start", "crop_value", "message"),
    [
        (2.0, 0, 0.75, r"is not a probability \(non-finite or outside \[0, 1\]\)"),  # 1.5
        (-1.0, 0, 0.25, "is not a probability"),  # -0.25
        (float("nan"), 0, 0.5, "is not a probability"),
        (1.0, 1, 0.5, "has 3 values for 4 crops"),  # drops the first crop
    ],
)
def test_graph_output_that_is_no_probability_is_refused(
    tmp_path: Path, scale: float, start: int, crop_value: float, message: str
) -> None:
    ensemble = _scaled_graph(tmp_path / "wild.onnx", scale, start)
    with pytest.raises(ModelError, match=rf"wild\.onnx: graph output {message}"):
        ensemble.predict(np.full((4, 3, 16, 16), crop_value, np.float32))


def test_in_range_output_of_the_same_graph_is_served(tmp_path: Path) -> None:
    """The refusals above are about the values: the same graph on harmless crops is served."""
    ensemble = _scaled_graph(tmp_path / "wild.onnx", 2.0)
    np.testing.assert_allclose(ensemble.predict(np.full((4, 3, 16, 16), 0.25, np.float32)), [0.5] * 4)


def test_non_float_output_at_run_time_is_refused(tmp_path: Path) -> None:
    """A graph that declares no output type it can be checked by at load still cannot pass integers."""
    nodes = [_reduce(keepdims=0), helper.make_node("Cast", ["mean"], ["p"], to=TensorProto.INT32)]
    _graph(tmp_path / "int.onnx", ["batch", 3, 16, 16], {"p": (TensorProto.INT32, ["batch"])}, nodes)
    session = onnx_runtime.open_session(tmp_path / "int.onnx", [onnx_runtime.CPU])
    with pytest.raises(ModelError, match=r"int\.onnx: graph output is int32, not floating point"):
        onnx_runtime.OnnxEnsemble(session, str(tmp_path / "int.onnx")).predict(
            np.zeros((2, 3, 16, 16), np.float32)
        )


def _manifest(onnx_entry: dict | None) -> Manifest:
    return Manifest(
        architecture="stand-in",
        input=SPEC,
        folds=(Fold("unused.safetensors"),),
        threshold=Threshold(0.5, "fixed"),
        onnx=None if onnx_entry is None else OnnxExport.from_dict(onnx_entry),
    )


@pytest.fixture
def graph_dir(tmp_path: Path) -> Path:
    _mean_sigmoid_graph(tmp_path / "graph.onnx")
    return tmp_path


def test_predicts_float64_probabilities_for_any_batch(graph_dir: Path) -> None:
    ensemble_manifest = _manifest(
        {"fp32": {"file": "graph.onnx", "sha256": writing.sha256_of(graph_dir / "graph.onnx")}}
    )
    ensemble = onnx_runtime.OnnxEnsemble.load(ensemble_manifest, graph_dir, providers=[onnx_runtime.CPU])
    for count in (1, 5):
        batch = np.random.default_rng(count).normal(size=(count, 3, 16, 16)).astype(np.float32)
        predicted = ensemble.predict(batch)
        assert predicted.dtype == np.float64 and predicted.shape == (count,)
        np.testing.assert_allclose(predicted, 1 / (1 + np.exp(-batch.mean(axis=(1, 2, 3)))), atol=1e-6)


def test_missing_graph_names_the_file(graph_dir: Path) -> None:
    ensemble_manifest = _manifest({"fp32": {"file": "gone.onnx"}})
    with pytest.raises(ModelError, match=r"gone\.onnx: ONNX graph \(fp32\) named in the manifest is missing"):
        onnx_runtime.OnnxEnsemble.load(ensemble_manifest, graph_dir, providers=[onnx_runtime.CPU])


def test_altered_graph_is_refused(graph_dir: Path) -> None:
    ensemble_manifest = _manifest({"fp32": {"file": "graph.onnx", "sha256": "0" * 64}})
    with pytest.raises(ModelError, match=r"graph\.onnx: sha256 differs"):
        onnx_runtime.OnnxEnsemble.load(ensemble_manifest, graph_dir, providers=[onnx_runtime.CPU])


def test_unreadable_graph_is_a_model_error(graph_dir: Path) -> None:
    (graph_dir / "graph.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match=r"graph\.onnx: ONNX Runtime cannot load it"):
        onnx_runtime.OnnxEnsemble.load(_manifest({"fp32": {"file": "graph.onnx"}}), graph_dir)


def test_manifest_without_graph_is_a_model_error(graph_dir: Path) -> None:
    with pytest.raises(ModelError, match="names no ONNX graph; run `python -m amf export-onnx`"):
        onnx_runtime.OnnxEnsemble.load(_manifest(None), graph_dir)


@pytest.mark.parametrize(
    ("graphs", "on_gpu", "expected"),
    [
        ({"fp32": 0, "fp16": 0}, True, "fp16"),
        ({"fp32": 0, "fp16": 0}, False, "fp32"),
        ({"fp16": 0}, False, "fp16"),
        ({"fp32": 0, "fp16": 0, "int8": 0}, False, "int8"),
        ({"fp32": 0, "fp16": 0, "int8": 0}, True, "fp16"),
        ({"int8": 0}, True, "int8"),
    ],
)
def test_variant_follows_the_device(graphs: dict, on_gpu: bool, expected: str) -> None:
    assert onnx_runtime.pick_variant(graphs, on_gpu=on_gpu) == expected


def test_cuda_is_requested_only_when_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: [onnx_runtime.CPU])
    assert onnx_runtime.default_providers() == [onnx_runtime.CPU]
    available = [onnx_runtime.CUDA, onnx_runtime.CPU]
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: available)

    def no_driver(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(onnx_runtime.ctypes, "CDLL", no_driver)
    assert onnx_runtime.default_providers() == [onnx_runtime.CPU]


@pytest.mark.parametrize(
    ("cpus", "cpu_max", "expected"),
    [
        (8, "max 100000", 8),  # no quota: the affinity mask
        (8, "150000 100000", 2),  # 1.5 CPUs of quota: rounded up
        (8, "50000 100000", 1),  # half a CPU: still one thread
        (2, "400000 100000", 2),  # the mask is smaller than the quota
        (8, None, 8),  # no cgroup v2 file
        (8, "garbage", 8),  # unreadable: the mask
    ],
)
def test_usable_cpus_is_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, cpu_max: str | None, expected: int
) -> None:
    cgroup = tmp_path / "cpu.max"
    if cpu_max is not None:
        cgroup.write_text(cpu_max + "\n")
    opened = []
    monkeypatch.setattr(onnx_runtime.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(onnx_runtime, "Path", lambda name: opened.append(name) or cgroup)
    assert onnx_runtime.usable_cpus() == expected
    assert opened == ["/sys/fs/cgroup/cpu.max"]


# --- the container end to end, through both back ends ------------------------------------------


@pytest.fixture(scope="module")
def exported(exported_ensemble: Path) -> Path:
    """The fixture ensemble exported to ONNX once per session (conftest); read-only: copy it."""
    return exported_ensemble


@pytest.fixture(scope="module")
def reference(exported: Path) -> dict[str, np.ndarray]:
    """P(atypical) of the PyTorch ensemble for the sample stack, computed in this process, by TTA."""
    import torch

    from amf.ensemble import Ensemble
    from amf.preprocess import prepare

    ensemble_manifest = manifest.load(exported)
    batch = prepare(stacks.read_pages(stacks.discover(SAMPLE_INPUT).files[0]), ensemble_manifest.input)
    ensemble = Ensemble.load(ensemble_manifest, exported, device=torch.device("cpu"))
    return {tta: predict.predict_views(ensemble, batch, tta) for tta in manifest.TTA_VIEWS}


def _inference(
    model: Path, output: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python inference.py` on the sample input, as the container runs it."""
    environment = {k: v for k, v in os.environ.items() if k != predict.BACKEND_VARIABLE} | (env or {})
    command = [sys.executable, str(ROOT / "inference.py"), "--input", str(SAMPLE_INPUT)]
    command += ["--output", str(output), "--model", str(model), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


@pytest.mark.parametrize("tta", ["none", "dihedral"])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_container_run_through_each_backend(
    exported: Path, reference: dict[str, np.ndarray], tmp_path: Path, backend: str, tta: str
) -> None:
    """Both back ends serve the manifest's test-time views: the mean over the turned batch."""
    served = Path(shutil.copytree(exported, tmp_path / "model"))
    data = json.loads((served / manifest.MANIFEST_NAME).read_text()) | {"tta": tta}
    (served / manifest.MANIFEST_NAME).write_text(json.dumps(data))
    result = _inference(served, tmp_path / "out", "--backend", backend)
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "out" / writing.OUTPUT_NAME).read_text())
    expected = reference[tta]
    assert [r["class"] for r in records] == ["atypical" if p >= 0.5 else "normal" for p in expected]
    assert all(isinstance(r["confidence"], float) for r in records)
    np.testing.assert_allclose([r["confidence"] for r in records], expected, atol=1e-5)
    assert np.abs(reference["dihedral"] - reference["none"]).max() > 1e-3  # the views do matter


def test_environment_variable_forces_torch(exported: Path, tmp_path: Path) -> None:
    result = _inference(exported, tmp_path, env={"AMF_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr
    assert (
        "amf.ensemble: loaded 3 folds of test_efficientnet" in result.stderr
        and "ONNX Runtime" not in result.stderr
    )


def test_unknown_backend_in_environment_is_one_line_error(exported: Path, tmp_path: Path) -> None:
    result = _inference(exported, tmp_path, env={"AMF_BACKEND": "tvm"})
    assert result.returncode == 2
    assert "back end must be one of" in result.stderr and "AMF_BACKEND" in result.stderr
    assert not (tmp_path / writing.OUTPUT_NAME).exists()


def test_onnx_path_never_imports_torch_or_timm(exported: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from amf.__main__ import main; "
        f"status = main(['predict', '--input', {str(SAMPLE_INPUT)!r}, '--output', {str(tmp_path)!r}, "
        f"'--model', {str(exported)!r}]); "
        "print(status, sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.stdout.split() == ["0", "[]"], result.stderr
    assert "ONNX Runtime: fp32 graph" in result.stderr


def test_missing_onnx_file_fails_naming_it(exported: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(exported, tmp_path / "broken"))
    (broken / "ensemble.fp32.onnx").unlink()
    result = _inference(broken, tmp_path / "out")
    assert result.returncode == 2
    assert "ensemble.fp32.onnx: ONNX graph (fp32) named in the manifest is missing" in result.stderr
    assert not (tmp_path / "out" / writing.OUTPUT_NAME).exists()


def test_forcing_onnx_without_graph_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="names no ONNX graph"):
        predict.load_predictor(manifest.load(FIXTURE_ENSEMBLE), FIXTURE_ENSEMBLE, "onnx")
