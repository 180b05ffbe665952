"""The ensemble as one ONNX graph in ONNX Runtime: the container's fast path.

It imports neither torch nor timm: a fresh container pays ~0.2 s of imports instead of ~5 s.
`amf.onnx_export` writes the graph (fp32 for the CPU, fp16 for CUDA) and records it in the manifest.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from amf.errors import ModelError
from amf.manifest import Manifest, check_sha256

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
RUN_INPUTS = 8  # crops per session run (OnnxEnsemble.predict; measured by bench/bench_session.py)
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
_CUDA_PROVIDER_LIB = "libonnxruntime_providers_cuda.so"

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ONNX Runtime sizes its thread pool from the host's cores; in a container limited to a few
    CPUs that oversubscribes them.
    """
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def cuda_loads() -> bool:
    """Whether ONNX Runtime's CUDA provider can load here.

    Asking for it blindly logs a load error on machines without a GPU, so first check for the
    NVIDIA driver, then load the provider library (and the CUDA/cuDNN it links) ourselves.
    """
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    library = Path(ort.__file__).parent / "capi" / _CUDA_PROVIDER_LIB
    try:
        ctypes.CDLL(str(library))
    except OSError:
        ort.preload_dlls()  # CUDA and cuDNN from nvidia-* wheels, when the image has them
        try:
            ctypes.CDLL(str(library))
        except OSError as error:
            log.warning("GPU driver present but ONNX Runtime's CUDA provider cannot load: %s", error)
            return False
    return True


def default_providers() -> list[str]:
    """CUDA then CPU where CUDA loads, else the CPU alone."""
    return [CUDA, CPU] if cuda_loads() else [CPU]


def open_session(path: Path, providers: list[str]) -> ort.InferenceSession:
    """An inference session with every graph optimisation and one thread per usable CPU.

    Nodes run one at a time (ONNX Runtime's sequential mode, so no inter-op pool), each on all
    CPUs. Memory reuse planning is off: for the ensemble graph, one copy of the fold per fold,
    it took 3 of 3.2 s of session start-up in development runs (fp16 on the CPU: 60 of 64 s); the arena still
    reuses freed blocks as the graph runs (peak memory measured lower, warm time unchanged).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = usable_cpus()
    options.enable_mem_reuse = False
    options.log_severity_level = 3  # errors only: no notes about node placement
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own, unrelated exception types
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: {error})") from None


class OnnxEnsemble:
    """One ONNX Runtime session running the whole ensemble graph on a batch of crops."""

    def __init__(self, session: ort.InferenceSession, name: str = "ONNX graph") -> None:
        self.session = session
        self.name = name  # names the graph in errors
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, manifest: Manifest, model_dir: Path, providers: list[str] | None = None) -> OnnxEnsemble:
        """Open the manifest's graph for the best provider: fp16 on CUDA, int8 or fp32 on the CPU.

        Raises:
            ModelError: the manifest names no graph, or the file is missing, altered or unloadable.
        """
        if not manifest.onnx:
            raise ModelError(
                f"{model_dir}: the manifest names no ONNX graph; run `python -m amf export-onnx`"
            )
        providers = providers or default_providers()
        variant = pick_variant(manifest.onnx.graphs, on_gpu=providers[0] == CUDA)
        graph = manifest.onnx.graphs[variant]
        path = Path(model_dir) / graph.file
        if not path.is_file():
            raise ModelError(f"{path}: ONNX graph ({variant}) named in the manifest is missing")
        check_sha256(path, graph.sha256)
        _check_data_files(manifest, model_dir, graph.data_files)
        session = open_session(path, providers)
        check_signature(session, path, manifest.input.size)
        used = session.get_providers()[0]
        if used != providers[0]:
            log.warning("ONNX Runtime could not start %s; %s graph runs on %s", providers[0], variant, used)
        log.info("ONNX Runtime: %s graph %s on %s", variant, path.name, used)
        return cls(session, str(path))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 from `prepare` -> (N,) float64 mean P(atypical) over folds.

        The graph runs on at most RUN_INPUTS crops at a time: without memory-reuse planning a
        run holds all its intermediate tensors, so peak memory follows the run's size, while the
        time per crop does not (bench/bench_session.py, 2 CPUs: the shipped MobileNetV2 at 160 px
        264 MiB and 1.7 ms an input in runs of 8, 559 MiB and 2.2 ms in runs of 32; the 10-fold
        MobileNet ensemble 372 MiB and 13.5 ms in runs of 8, 554 MiB and 13.9 ms in runs of 32).

        Raises:
            ModelError: the graph's output is not N probabilities (float, finite, in [0, 1]).
        """
        runs = [self._run(batch[start : start + RUN_INPUTS]) for start in range(0, len(batch), RUN_INPUTS)]
        return np.concatenate(runs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (output,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        output = np.asarray(output)
        if not np.issubdtype(output.dtype, np.floating):
            raise ModelError(f"{self.name}: graph output is {output.dtype}, not floating point")
        if output.size != len(batch):
            raise ModelError(f"{self.name}: graph output has {output.size} values for {len(batch)} crops")
        if not np.all(np.isfinite(output)) or output.min() < 0 or output.max() > 1:
            raise ModelError(f"{self.name}: graph output is not a probability (non-finite or outside [0, 1])")
        return output.astype(np.float64).reshape(len(batch))


def _check_data_files(manifest: Manifest, model_dir: Path, data_files: tuple[str, ...]) -> None:
    """The fold files a graph reads its weights from are the manifest's folds, unaltered."""
    hashes = {fold.file: fold.sha256 for fold in manifest.folds}
    for file in data_files:
        if file not in hashes:
            raise ModelError(
                f"{Path(model_dir) / file}: the ONNX graph reads weights from a file that is no fold"
            )
        check_sha256(Path(model_dir) / file, hashes[file])


def check_signature(session: ort.InferenceSession, path: Path, size: int) -> None:
    """Refuse a graph that is not the manifest's ensemble before it sees a crop.

    It must take one float32 batch (N, 3, size, size) and return one float (N,) or (N, 1).
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problem = None
    if len(inputs) != 1 or len(outputs) != 1:
        problem = f"has {len(inputs)} inputs and {len(outputs)} outputs, expected one of each"
    elif inputs[0].type != "tensor(float)" or not _shape_is(inputs[0].shape, [3, size, size]):
        problem = (
            f"input is {inputs[0].type} {inputs[0].shape}, expected tensor(float) [N, 3, {size}, {size}]"
        )
    elif outputs[0].type not in FLOAT_TYPES or not _shape_is(outputs[0].shape, [], [1]):
        problem = f"output is {outputs[0].type} {outputs[0].shape}, expected a float [N] or [N, 1]"
    if problem:
        raise ModelError(f"{path}: ONNX graph {problem}")


def _shape_is(shape: list, *tails: list[int]) -> bool:
    """Whether `shape` is a batch axis (any size, or symbolic) followed by one of `tails`."""
    return len(shape) >= 1 and any(list(shape[1:]) == list(tail) for tail in tails)


def pick_variant(graphs: Mapping[str, object], *, on_gpu: bool) -> str:
    """fp16 on the GPU; on the CPU int8 (amf.quantize) where the manifest has it, else fp32
    (ONNX Runtime's CPU kernels are fp32); else what exists.

    `amf.manifest` has checked that `graphs` names at least one variant.
    """
    order = ("fp16", "fp32", "int8") if on_gpu else ("int8", "fp32", "fp16")
    return next(variant for variant in order if variant in graphs)
