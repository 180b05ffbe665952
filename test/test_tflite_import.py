"""amf.tflite_import: the vendored int8 MobileNets become timm networks that compute what the
original graphs compute, and still fine-tune."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE_INPUT, shared
from PIL import Image
from safetensors.torch import load_file

from amf import models, stacks, tflite_import
from amf.errors import ModelError
from amf.preprocess import prepare

PRETRAINED = ROOT / "resources" / "pretrained"
V2 = PRETRAINED / "mobilenet_v2_1.0_224_quant.tflite"
V1 = PRETRAINED / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
LABELS = (PRETRAINED / "imagenet_labels.txt").read_text().splitlines()  # line 0: background
STACK = SAMPLE_INPUT / "images" / stacks.SLUG / "stack_fixture.tiff"


def imported(tmp_path: Path, source: Path, architecture: str, **calibration) -> torch.nn.Module:
    """The imported network with its ImageNet head (V2) or timm's unused random one (V1)."""
    path = tmp_path / f"{architecture}.safetensors"
    tflite_import.import_tflite(source, architecture, path, **calibration)
    model = models.create(architecture, num_classes=1000)
    model.load_state_dict(load_file(str(path)), strict=False)
    return model.eval()


def tflite_output(source: Path, image: np.ndarray) -> np.ndarray:
    """The original int8 graph's dequantised output for one RGB image, resized as TF-slim does."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(str(source))
    interpreter.allocate_tensors()
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], resized[None])
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    scale, zero = output["quantization"]
    return (interpreter.get_tensor(output["index"]).astype(np.float64).reshape(-1) - zero) * scale


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(shared("pretrained", "photos", f"{name}.bmp")).convert("RGB"))


@pytest.fixture(scope="module")
def mobilenet_v2(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    return imported(tmp_path_factory.mktemp("v2"), V2, "tf_mobilenetv2_100")


@pytest.mark.parametrize(("name", "label"), [("cat", "Egyptian cat"), ("bird", "chickadee")])
def test_v2_names_the_photos_and_agrees_with_the_int8_graph(
    mobilenet_v2: torch.nn.Module, name: str, label: str
) -> None:
    image = photo(name)
    spec = models.default_input_spec("tf_mobilenetv2_100", 224)
    with torch.no_grad():
        ours = mobilenet_v2(torch.from_numpy(prepare([image], spec)))[0].softmax(0).numpy()
    theirs = tflite_output(V2, image)[1:]  # without the background class
    top5 = list(np.argsort(-ours)[:5])
    assert LABELS[top5[0] + 1] == label
    assert top5[0] == np.argmax(theirs)
    reference = [c for c in np.argsort(-theirs, kind="stable")[:5] if theirs[c] > 0]  # int8: ties at 0
    assert len(set(reference) & set(top5)) >= len(reference) - 1, (reference, top5)


def test_v1_embeddings_agree_with_the_int8_graph(tmp_path: Path) -> None:
    model = imported(tmp_path, V1, "tf_mobilenetv1_100")
    spec = models.default_input_spec("tf_mobilenetv1_100", 224)
    for page in stacks.read_pages(STACK)[:3]:
        theirs = tflite_output(V1, page)
        with torch.no_grad():
            features = model.forward_features(torch.from_numpy(prepare([page], spec)))
            ours = model.forward_head(features, pre_logits=True)[0].double().numpy()
        cosine = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
        assert cosine > 0.99
        assert np.abs(ours - theirs).max() < 0.1 * np.abs(theirs).max()


def test_recalibrated_batchnorm_keeps_the_function_and_holds_real_statistics() -> None:
    torch.manual_seed(0)
    model = models.create("test_efficientnet").eval()
    batch = torch.randn(8, 3, 32, 32)
    before = model(batch)
    assert tflite_import.recalibrate_batchnorm(model, [batch[:4], batch[4:]]) == 8
    torch.testing.assert_close(model.eval()(batch), before, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        stem = model.conv_stem(batch)
    torch.testing.assert_close(model.bn1.running_mean, stem.mean((0, 2, 3)), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model.bn1.running_var, stem.var((0, 2, 3), correction=0), atol=1e-4, rtol=1e-3)
    # In train mode each batch norm now sees the statistics it holds: outputs barely move.
    torch.testing.assert_close(model.train()(batch), before, atol=1e-3, rtol=1e-3)


def test_import_records_provenance_and_fine_tunes(tmp_path: Path) -> None:
    crops = stacks.read_pages(STACK)
    out = tmp_path / "v2.safetensors"
    metadata = tflite_import.import_tflite(V2, "tf_mobilenetv2_100", out, crops=crops, size=64)
    assert metadata["source_sha256"] == "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"
    assert metadata["calibration"] == f"batch norm statistics of {len(crops)} crops at 64 px"
    assert "Apache-2.0" in metadata["licence"]
    torch.manual_seed(0)
    model = models.create("tf_mobilenetv2_100", pretrained=out).train()
    assert not model.get_classifier().weight.any()  # the new head starts at zero
    spec = models.default_input_spec("tf_mobilenetv2_100", 64)
    images = torch.from_numpy(prepare(crops, spec))
    targets = torch.tensor([0.0, 1.0] * (len(crops) // 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).reshape(-1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_foreign_file_and_architecture(tmp_path: Path) -> None:
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ModelError, match=r"bad\.tflite: not a TensorFlow Lite model"):
        tflite_import.import_tflite(tmp_path / "bad.tflite", "tf_mobilenetv2_100", tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="import-tflite builds"):
        tflite_import.import_tflite(V2, "mobilenetv2_100", tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="the graph has 27 convolutions"):
        tflite_import.import_tflite(V1, "tf_mobilenetv2_100", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
