"""amf.onnx_export: one ONNX graph per variant, checked against the PyTorch ensemble, or nothing written."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT

from amf import manifest, models, onnx_export, onnx_runtime, writing
from amf.__main__ import main
from amf.ensemble import Ensemble
from amf.errors import ModelError


def _copy_fixture(folder: Path) -> Path:
    return Path(shutil.copytree(FIXTURE_ENSEMBLE, folder / "ensemble"))


@pytest.fixture
def exported(exported_ensemble: Path) -> Path:
    """The committed 3-fold fixture ensemble (test_efficientnet, 64 px), exported by the CLI with
    the dynamo exporter once per session (conftest); read-only."""
    return exported_ensemble


def _session(model_dir: Path, variant: str) -> onnx_runtime.OnnxEnsemble:
    path = model_dir / onnx_export.FILES[variant]
    return onnx_runtime.OnnxEnsemble(onnx_runtime.open_session(path, [onnx_runtime.CPU]))


def test_export_records_checked_graphs_in_manifest(exported: Path) -> None:
    record = manifest.load(exported).onnx
    assert (record.opset, record.parity_crops) == (18, 6) and set(record.versions) >= {"torch", "onnxruntime"}
    for variant in ("fp32", "fp16"):
        graph = record.graphs[variant]
        assert graph.exporter == "dynamo"
        assert graph.sha256 == writing.sha256_of(exported / graph.file)
        assert graph.tolerance == onnx_export.TOLERANCE[variant]
    assert not list(exported.glob(".onnx-export-*")), "temporary folder left behind"


def test_recorded_difference_is_the_one_measured_again(exported: Path) -> None:
    """max_abs_diff is what the graph, run again on the recorded provider, differs from PyTorch
    by on the parity crops (whole batch and one crop), not a bound that holds whatever it is."""
    ensemble_manifest = manifest.load(exported)
    batch = onnx_export.parity_batch(
        SAMPLE_INPUT, ensemble_manifest, max_crops=ensemble_manifest.onnx.parity_crops
    )
    reference = Ensemble.load(ensemble_manifest, exported, device=torch.device("cpu")).predict(batch)
    for variant, graph in ensemble_manifest.onnx.graphs.items():
        session = onnx_runtime.open_session(exported / graph.file, [graph.checked_on])
        served = onnx_runtime.OnnxEnsemble(session)
        outputs = np.concatenate([served.predict(batch), served.predict(batch[:1])])
        measured = np.abs(outputs - np.concatenate([reference, reference[:1]])).max()
        # The CPU provider repeats itself bit for bit; a CUDA one may pick other kernels per session.
        cpu = graph.checked_on == onnx_runtime.CPU
        expected = pytest.approx(measured, rel=1e-3 if cpu else 0.5, abs=1e-9 if cpu else 1e-4)
        assert graph.max_abs_diff == expected, variant
    assert (
        ensemble_manifest.onnx.graphs["fp16"].max_abs_diff
        > ensemble_manifest.onnx.graphs["fp32"].max_abs_diff
    )


@pytest.mark.parametrize("count", [1, 2, 6, 13])
def test_fp32_graph_matches_pytorch_at_any_batch_size(exported: Path, count: int) -> None:
    ensemble_manifest = manifest.load(exported)
    crops = onnx_export.parity_batch(SAMPLE_INPUT, ensemble_manifest, max_crops=16)
    batch = np.resize(crops, (count, *crops.shape[1:]))  # repeats the 6 real crops as needed
    expected = Ensemble.load(ensemble_manifest, exported, device=torch.device("cpu")).predict(batch)
    predicted = _session(exported, "fp32").predict(batch)
    assert predicted.shape == (count,) and predicted.dtype == np.float64
    np.testing.assert_allclose(predicted, expected, atol=1e-5)


def test_fp16_graph_is_close(exported: Path) -> None:
    ensemble_manifest = manifest.load(exported)
    batch = onnx_export.parity_batch(SAMPLE_INPUT, ensemble_manifest, max_crops=16)
    np.testing.assert_allclose(
        _session(exported, "fp16").predict(batch), _session(exported, "fp32").predict(batch), atol=1e-2
    )


def test_graph_is_one_trace_per_fold_with_weights_stored_as_fp16(exported: Path) -> None:
    """fp32: the folds' copies of one trace, averaged, every weight stored as fp16 (the folds'
    safetensors are fp16, so nothing is lost) behind a Cast to fp32; fp16: fp16 weights as
    traced; neither holds the exporter's per-node notes, which name this machine's paths."""
    fp32, fp16 = (onnx.load(str(exported / onnx_export.FILES[v])) for v in ("fp32", "fp16"))
    (mean,) = [node for node in fp32.graph.node if node.op_type == "Mean"]
    assert list(mean.output) == [onnx_export.OUTPUT_NAME] and len(mean.input) == 3
    casts = {node.output[0]: node.input[0] for node in fp32.graph.node if node.op_type == "Cast"}
    stored = {i.name: i.data_type for i in fp32.graph.initializer}
    weights = [node.input[1] for node in fp32.graph.node if node.op_type == "Conv"]
    assert weights and all(stored[casts[w]] == onnx.TensorProto.FLOAT16 for w in weights)
    convolutions = {node.input[1] for node in fp16.graph.node if node.op_type == "Conv"}
    weights = [i.data_type for i in fp16.graph.initializer if i.name in convolutions]
    assert weights and set(weights) == {onnx.TensorProto.FLOAT16}
    for variant in ("fp32", "fp16"):
        assert str(ROOT).encode() not in (exported / onnx_export.FILES[variant]).read_bytes()


def test_graphs_read_their_weights_from_the_fold_files(exported: Path) -> None:
    """One copy of the weights: every weight of both graphs is ONNX external data pointing into
    its fold's safetensors file (same bytes), so each graph file is smaller than one fold."""
    ensemble_manifest = manifest.load(exported)
    folds = [fold.file for fold in ensemble_manifest.folds]
    for variant in ("fp32", "fp16"):
        graph = ensemble_manifest.onnx.graphs[variant]
        assert graph.data_files == tuple(sorted(folds))
        proto = onnx.load(str(exported / graph.file), load_external_data=False)
        convolutions = {node.input[1] for node in proto.graph.node if node.op_type == "Conv"}
        casts = {node.output[0]: node.input[0] for node in proto.graph.node if node.op_type == "Cast"}
        for initializer in proto.graph.initializer:
            if initializer.name in {casts.get(c, c) for c in convolutions}:
                assert initializer.data_location == onnx.TensorProto.EXTERNAL, initializer.name
                location = {entry.key: entry.value for entry in initializer.external_data}["location"]
                assert location in folds
        size = (exported / graph.file).stat().st_size
        assert size < min((exported / fold).stat().st_size for fold in folds), variant


def test_a_fold_file_changed_under_the_graph_is_refused(exported: Path, tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(exported, tmp_path / "ensemble"))
    fold = model_dir / manifest.load(model_dir).folds[1].file
    data = bytearray(fold.read_bytes())
    data[-2:] = b"\x00\x3c"  # one weight becomes 1.0: the graph would read it
    fold.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{fold.name}: sha256 differs from the manifest's"):
        onnx_runtime.OnnxEnsemble.load(manifest.load(model_dir), model_dir, [onnx_runtime.CPU])


def test_only_constants_fp16_holds_exactly_are_stored_as_fp16() -> None:
    exact, inexact = np.array([0.5, -2.0, 1024.0], np.float32), np.array([0.1, 1e-8, 7e5], np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["exact", "inexact"], ["sum"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("sum", onnx.TensorProto.FLOAT, [3])],
        [onnx.numpy_helper.from_array(exact, "exact"), onnx.numpy_helper.from_array(inexact, "inexact")],
    )
    stored = onnx_export._exact_fp16_storage(
        onnx.helper.make_model(graph, ir_version=10, opset_imports=[onnx.helper.make_opsetid("", 18)])
    )
    kinds = {i.name: i.data_type for i in stored.graph.initializer}
    assert kinds == {"exact/fp16": onnx.TensorProto.FLOAT16, "inexact": onnx.TensorProto.FLOAT}
    session = ort.InferenceSession(stored.SerializeToString(), providers=[onnx_runtime.CPU])
    np.testing.assert_array_equal(session.run(None, {})[0], exact + inexact)


def test_trace_constant_that_is_no_fold_weight_is_refused() -> None:
    """A constant baked into the trace (a cache of one fold) must not be shared by every fold."""
    fold = onnx_export._Member(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)), torch.float32)
    weight = fold.model[0].weight.detach().numpy()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["crops", "model.0.weight"], ["p"])],
        "traced",
        [onnx.helper.make_tensor_value_info("crops", onnx.TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.zeros_like(weight), "model.0.weight")],
    )
    traced = onnx.helper.make_model(graph)
    (initializer,) = onnx_export._with_weights(traced, fold).graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(initializer), weight)
    traced.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(2, np.float32), "cache"))
    with pytest.raises(ModelError, match="traced constant 'cache' is no parameter or buffer of the fold"):
        onnx_export._with_weights(traced, fold)


def test_failed_dynamo_export_falls_back_to_torchscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = torch.onnx.export

    def dynamo_fails(*args: object, **kwargs: object) -> object:
        if kwargs.get("dynamo"):
            raise RuntimeError("unsupported operator")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    model_dir = _copy_fixture(tmp_path)
    with pytest.raises(ModelError, match="dynamo ONNX export failed.*unsupported operator"):
        onnx_export.export(model_dir, SAMPLE_INPUT, exporter="dynamo")
    record = onnx_export.export(model_dir, SAMPLE_INPUT, exporter="auto").onnx
    assert record.graphs["fp32"].exporter == record.graphs["fp16"].exporter == "torchscript"
    assert record.graphs["fp32"].max_abs_diff <= onnx_export.TOLERANCE["fp32"]


def test_parity_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _copy_fixture(tmp_path)
    before = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    predict = Ensemble.predict
    monkeypatch.setattr(Ensemble, "predict", lambda self, batch: predict(self, batch) * 0.5)
    with pytest.raises(ModelError, match=r"ensemble\.fp32\.onnx: ONNX differs from PyTorch by 0\.2"):
        onnx_export.export(model_dir, SAMPLE_INPUT, exporter="torchscript")
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == before


def test_the_command_needs_crops_for_its_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No default that exists in one place only (test/ is not in the training image): --crops is
    required, and its omission is a usage error naming it before anything is read."""
    with pytest.raises(SystemExit) as end:
        main(["export-onnx", "--model", str(_copy_fixture(tmp_path))])
    assert end.value.code == 2
    assert "the following arguments are required: --crops" in capsys.readouterr().err


def test_unknown_exporter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="exporter must be one of"):
        onnx_export.export(tmp_path, SAMPLE_INPUT, exporter="tensorrt")


@pytest.mark.parametrize(
    ("onnx", "message"),
    [
        ("ensemble.onnx", "onnx must be an object or null"),
        ({"opset": 18}, "onnx names no graph"),
        ({"fp32": {"sha256": "0"}}, "must each be an object whose 'file' is a relative path"),
        ({"fp32": {"file": "/etc/passwd"}}, "must each be an object whose 'file' is a relative path"),
    ],
)
def test_manifest_rejects_malformed_onnx_entry(onnx: object, message: str) -> None:
    data = json.loads((FIXTURE_ENSEMBLE / manifest.MANIFEST_NAME).read_text()) | {"onnx": onnx}
    with pytest.raises(ModelError, match=message):
        manifest.from_dict(data)


@pytest.mark.slow
def test_an_ensemble_mixing_architectures_exports_each_fold_with_its_network(tmp_path: Path) -> None:
    model_dir = _copy_fixture(tmp_path)
    ensemble_manifest = manifest.load(model_dir)
    torch.manual_seed(0)
    models.save_weights(models.create("test_byobnet"), model_dir / "other.safetensors")
    extra = manifest.Fold(
        "other.safetensors", writing.sha256_of(model_dir / "other.safetensors"), "test_byobnet"
    )
    manifest.save(dataclasses.replace(ensemble_manifest, folds=(*ensemble_manifest.folds, extra)), model_dir)
    mixed = onnx_export.export(model_dir, SAMPLE_INPUT, exporter="dynamo")
    assert mixed.architectures == ("test_efficientnet", "test_byobnet")
    batch = onnx_export.parity_batch(SAMPLE_INPUT, mixed, max_crops=16)
    expected = Ensemble.load(mixed, model_dir, device=torch.device("cpu")).predict(batch)
    np.testing.assert_allclose(_session(model_dir, "fp32").predict(batch), expected, atol=1e-5)
    fp32 = onnx.load(str(model_dir / onnx_export.FILES["fp32"]))
    (mean,) = [node for node in fp32.graph.node if node.op_type == "Mean"]
    assert len(mean.input) == 4
