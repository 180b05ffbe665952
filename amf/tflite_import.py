"""ImageNet weights from a TensorFlow Lite MobileNet -> a timm state dict that fine-tunes.

The only ImageNet-trained backbones that reach our machines are Google's int8 TF-slim MobileNets
(`resources/pretrained/`). Their graphs hold, in execution order, one quantised convolution per
timm convolution, with batch norm folded into a bias. The import:

1. dequantises each weight ((q - zero point) x scale) and bias, and re-lays them out
   (conv OHWI -> OIHW, depthwise 1HWC -> C1HW; V2's final 1x1 conv -> the classifier without
   TF's background class);
2. gives each batch norm the folded bias as a pass-through (the network then computes what the
   int8 graph computes, up to quantisation of the activations);
3. re-estimates each batch norm from real crops without changing what it computes in eval mode
   (`recalibrate_batchnorm`). A pass-through batch norm normalises training batches by
   statistics it does not have, and the network did not learn (resources/pretrained/NOTICE.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from amf import models, tf_networks, training_data, writing
from amf.config import TrainConfig
from amf.errors import ModelError
from amf.plan import load_plan
from amf.preprocess import prepared_batches

log = logging.getLogger(__name__)

FORMAT = "amf-pretrained/1"
CALIBRATION_CROPS = 512  # crops whose statistics re-estimate batch norm (`amf import-tflite --crops`)
IMPORTED = "pretrained"  # a run folder's imported starting weights (`for_run`)
LICENCE = "Apache-2.0 (google-coral/test_data; resources/pretrained/LICENSE)"
_CONV, _DEPTHWISE = "CONV_2D", "DEPTHWISE_CONV_2D"
_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8}  # tflite.TensorType values


def read_convolutions(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every convolution of a .tflite graph in execution order, as float32 in
    PyTorch layouts."""
    import tflite  # training-only dependency (requirements-dev.txt)

    try:
        graph_model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        graph = graph_model.Subgraphs(0)
    except Exception as error:  # flatbuffers raises assorted errors on foreign files
        raise ModelError(f"{path}: not a TensorFlow Lite model ({error})") from None
    names = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    layers = []
    for index in range(graph.OperatorsLength()):
        operator = graph.Operators(index)
        code = graph_model.OperatorCodes(operator.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind not in (_CONV, _DEPTHWISE):
            continue
        weight_index, bias_index = operator.InputsAsNumpy()[1:3]
        weight = _dequantise(graph_model, graph.Tensors(weight_index))
        bias = _dequantise(graph_model, graph.Tensors(bias_index))
        layout = (3, 0, 1, 2) if kind == _DEPTHWISE else (0, 3, 1, 2)
        layers.append((np.ascontiguousarray(weight.transpose(layout)), bias))
    return layers


def _dequantise(graph_model, tensor) -> np.ndarray:
    """A constant tensor as float32: (q - zero point) x scale, per tensor or per channel."""
    raw = graph_model.Buffers(tensor.Buffer()).DataAsNumpy()
    values = np.frombuffer(raw.tobytes(), dtype=_DTYPES[tensor.Type()]).reshape(tensor.ShapeAsNumpy())
    quantisation = tensor.Quantization()
    if quantisation is None or quantisation.ScaleLength() == 0:
        return values.astype(np.float32)
    shape = [1] * values.ndim
    if quantisation.ScaleLength() > 1:
        shape[quantisation.QuantizedDimension()] = -1
    scale = quantisation.ScaleAsNumpy().reshape(shape)
    zero = quantisation.ZeroPointAsNumpy().reshape(shape) if quantisation.ZeroPointLength() else 0
    return ((values.astype(np.float64) - zero) * scale).astype(np.float32)


def to_state_dict(layers: list[tuple[np.ndarray, np.ndarray]], model: torch.nn.Module) -> dict:
    """Place the graph's convolutions on timm's, in order, each batch norm a pass-through of the
    folded bias; a final extra 1x1 conv is the classifier (TF's background class dropped)."""
    pairs = _conv_bn_pairs(model)
    classifier = model.get_classifier()
    if len(layers) == len(pairs) + 1 and isinstance(classifier, torch.nn.Linear):
        weight, bias = layers.pop()
        if weight.shape[0] != classifier.out_features + 1:
            raise ModelError(f"classifier has {weight.shape[0]} classes; expected background + 1000")
        head = model.pretrained_cfg["classifier"]
        state = {f"{head}.weight": weight[1:, :, 0, 0], f"{head}.bias": bias[1:]}
    else:
        state = {}
    if len(layers) != len(pairs):
        raise ModelError(f"the graph has {len(layers)} convolutions, {type(model).__name__} {len(pairs)}")
    for (weight, bias), (conv, bn) in zip(layers, pairs, strict=True):
        expected = tuple(model.get_submodule(conv).weight.shape)
        if weight.shape != expected:
            raise ModelError(f"{conv}: the graph's weight is {weight.shape}, timm's {expected}")
        eps = model.get_submodule(bn).eps
        state[f"{conv}.weight"] = weight
        state |= {
            f"{bn}.weight": np.ones_like(bias),
            f"{bn}.bias": bias,
            f"{bn}.running_mean": np.zeros_like(bias),
            f"{bn}.running_var": np.full_like(bias, 1 - eps),
        }
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}


def _conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) module names in registration order, which is execution order here."""
    pairs, conv = [], None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            conv = name
        elif isinstance(module, torch.nn.BatchNorm2d) and conv is not None:
            pairs.append((conv, name))
            conv = None
    return pairs


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Give every batch norm the real mean and variance of its input over `batches`, adjusting
    its weight and bias so that eval mode computes exactly what it did; returns images seen.

    Train mode then normalises each batch by statistics close to the stored ones, so
    fine-tuning starts from the pretrained function instead of a distorted one.
    """
    norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    sums: dict[str, list[torch.Tensor]] = {}

    def collect(name: str):
        def hook(_module, inputs, _output) -> None:
            x = inputs[0].double().transpose(0, 1).flatten(1)
            moments = [x.shape[1] * torch.ones(()), x.sum(1), (x * x).sum(1)]
            sums[name] = (
                [a + b for a, b in zip(sums[name], moments, strict=True)] if name in sums else moments
            )

        return hook

    handles = [norm.register_forward_hook(collect(name)) for name, norm in norms.items()]
    model.eval()
    seen = 0
    try:
        for batch in batches:
            model(batch)
            seen += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    for name, norm in norms.items():
        count, total, squares = sums[name]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        old_scale = norm.weight.double() / (norm.running_var.double() + norm.eps).sqrt()
        new_std = (var + norm.eps).sqrt()
        norm.bias.copy_(norm.bias.double() + (mean - norm.running_mean.double()) * old_scale)
        norm.weight.copy_(old_scale * new_std)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
    return seen


def import_tflite(
    source: Path,
    architecture: str,
    out: Path,
    *,
    crops: list[np.ndarray] | None = None,
    size: int = 224,
    batch_size: int = 64,
) -> dict[str, str]:
    """Write `source`'s weights for `architecture` (one of tf_networks.ARCHITECTURES) to `out` as
    safetensors; with `crops`, batch norm is recalibrated on them at `size` px. Returns the
    metadata stored in the file (source sha256, licence, calibration)."""
    _check_architecture(architecture)
    model = models.create(architecture, num_classes=1000)
    state = to_state_dict(read_convolutions(source), model)
    model.load_state_dict(state, strict=False)
    calibration = "none: batch norm passes the folded bias through"
    if crops:
        spec = models.default_input_spec(architecture, size)
        batches = (torch.from_numpy(batch) for batch in prepared_batches(crops, spec, batch_size))
        seen = recalibrate_batchnorm(model, batches)
        calibration = f"batch norm statistics of {seen} crops at {size} px"
    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "source": Path(source).name,
        "source_sha256": writing.sha256_of(Path(source)),
        "licence": LICENCE,
        "calibration": calibration,
    }
    head = model.pretrained_cfg["classifier"] + "."
    weights = {  # a body-only graph (V1) leaves timm's random classifier out
        name: value.contiguous()
        for name, value in model.state_dict().items()
        if name in state or not name.startswith(head)
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writing.write_with(out, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
    log.info("%s -> %s (%d tensors; %s)", source, out, len(weights), calibration)
    return metadata


def for_run(config: TrainConfig, plan_path: Path, run_dir: Path) -> TrainConfig:
    """`config` as trained: a `.tflite` `pretrained` becomes its import, batch norm re-estimated on
    CALIBRATION_CROPS crops of the plan's table at `config.size` (what `amf import-tflite --table
    TABLE --size SIZE` writes), made once into RUN/pretrained/. Other settings pass unchanged."""
    if config.pretrained is None or Path(config.pretrained).suffix != ".tflite":
        return config
    source = Path(config.pretrained)
    if not source.is_file():
        raise ModelError(f"{source}: .tflite file not found")
    _check_architecture(config.architecture)
    out = Path(run_dir) / IMPORTED / f"{source.stem}-{config.size}px.safetensors"
    if not out.is_file():
        crops = training_data.sample_crops(Path(load_plan(plan_path).table), CALIBRATION_CROPS)
        import_tflite(source, config.architecture, out, crops=crops, size=config.size)
    return replace(config, pretrained=str(out))


def _check_architecture(architecture: str) -> None:
    if architecture not in tf_networks.ARCHITECTURES:
        raise ModelError(f"import-tflite builds {list(tf_networks.ARCHITECTURES)}, not {architecture!r}")
