"""Training one model: crops in memory -> augment -> prepare -> timm network -> best checkpoint.

A model's folder is what the container loads: `weights.safetensors` + `manifest.json` (a one-fold
ensemble), plus `val_predictions.csv` (the saved weights' out-of-fold predictions, made through
`amf.ensemble.Ensemble`), `metrics.csv` (one row per epoch), `last.pt` (the state to resume from
after a kill; deleted when done) and `result.json`, written last: it marks the model finished.

Recipe: class-balanced sampling (WeightedRandomSampler), dihedral + H&E stain augmentation,
focal loss (torchvision), AdamW with a one-cycle schedule, mixed precision on GPU, the best epoch
by validation AUROC. Started by `torchrun`, it trains data-parallel (DDP); otherwise one process.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import sigmoid_focal_loss
from tqdm import tqdm

from amf import __version__, manifest, models, writing
from amf.dataset import Sample
from amf.ensemble import Ensemble
from amf.errors import InputError
from amf.manifest import Fold, InputSpec, Manifest, Threshold
from amf.metrics import auroc, binary_metrics, otsu_threshold, youden_threshold
from amf.preprocess import prepare
from amf.runtime import (
    Runtime,
    autocast_dtype,
    barrier,
    broadcast,
    parallel,
    seed_everything,
    start_runtime,
)
from amf.training_data import BalancedSampler, CropDataset, load_crops, predict_crops, write_rows

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
LAST = "last.pt"
METRICS = "metrics.csv"
VAL_PREDICTIONS = "val_predictions.csv"
RESULT = "result.json"
_NEUTRAL = ("workers",)  # settings that cannot change the trained weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model; saved beside it and checked on resume."""

    architecture: str = "efficientvit_l2"
    size: int = 256
    pretrained: str | None = None  # None, "hub" (timm's weights, needs the network) or a file
    epochs: int = 20
    lr: float = 2e-4
    batch_size: int = 32
    weight_decay: float = 0.05
    warmup: float = 0.1  # share of steps spent warming up (one-cycle)
    stain: float = 0.05  # H&E jitter strength; 0 turns it off
    soft_labels: bool = False  # targets = share of experts voting atypical
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0  # < 0: no class weighting (the sampler already balances)
    epoch_size: int | None = None  # crops drawn per epoch; None: the training set's size
    patience: int = 0  # stop after this many epochs without a better AUROC; 0: never
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            text
            for text, bad in (
                (f"epochs must be >= 1, got {self.epochs}", self.epochs < 1),
                (f"size must be >= 16, got {self.size}", self.size < 16),
                (f"batch size must be >= 2 (batch norm), got {self.batch_size}", self.batch_size < 2),
                (f"lr must be > 0, got {self.lr}", self.lr <= 0),
                (f"stain must be in [0, 1), got {self.stain}", not 0 <= self.stain < 1),
                (f"warmup must be in (0, 1), got {self.warmup}", not 0 < self.warmup < 1),
                (f"workers must be >= 0, got {self.workers}", self.workers < 0),
            )
            if bad
        ]
        if problems:
            raise InputError("training settings: " + "; ".join(problems))


@dataclass
class _Progress:
    """What survives a kill: the last finished epoch and the best one so far."""

    epoch: int = -1
    best_epoch: int = -1
    best_auroc: float = float("-inf")
    history: list[dict[str, float]] = field(default_factory=list)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """torchvision's sigmoid focal loss, mean over the batch; targets may be soft (expert votes)."""
    return sigmoid_focal_loss(
        logits, targets, alpha=config.focal_alpha, gamma=config.focal_gamma, reduction="mean"
    )


def train(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    config: TrainConfig,
    out_dir: Path,
    *,
    crops: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train one model into `out_dir` (resuming a killed run there) and return its result.

    Args:
        train_samples, val_samples: the split; their images must exist (see dataset.check_images).
        config: the recipe; a resumed run must use the same one.
        crops: decoded crops by sample id (from `load_crops`); decoded here when None.

    Raises:
        InputError: an empty split, or a resumed folder trained with another config.
    """
    out_dir = Path(out_dir)
    if (out_dir / RESULT).is_file():
        return json.loads((out_dir / RESULT).read_text())
    if not train_samples or not val_samples:
        raise InputError(f"{out_dir}: training needs a non-empty training and validation set")
    runtime = start_runtime()
    crops = crops if crops is not None else load_crops([*train_samples, *val_samples])
    spec = models.default_input_spec(config.architecture, config.size)
    seed_everything(config.seed)
    model = models.create(config.architecture, pretrained=config.pretrained).to(runtime.device)
    if runtime.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = _loader(train_samples, crops, spec, config, runtime)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(loader), pct_start=config.warmup
    )
    amp_dtype = autocast_dtype(config.amp, runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=amp_dtype == torch.float16)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    progress = _resume(out_dir, parts, config, runtime.device)
    network = parallel(model, runtime)
    val_crops = [crops[s.id] for s in val_samples]
    val_labels = np.array([s.label for s in val_samples])
    started = time.perf_counter()
    for epoch in range(progress.epoch + 1, config.epochs):
        loader.sampler.epoch = loader.dataset.epoch = epoch
        row = _train_epoch(network, loader, optimizer, scheduler, scaler, config, amp_dtype, runtime, epoch)
        stop = False
        if runtime.main:
            row.update(_validate(model, val_crops, val_labels, spec, config, amp_dtype, runtime.device))
            stop = _end_epoch(out_dir, epoch, row, progress, parts, config)
        if broadcast(stop, runtime):
            break
    result = (
        _finish(out_dir, train_samples, val_samples, val_crops, spec, config, progress, started)
        if runtime.main
        else {}
    )
    barrier(runtime)
    return result


def _loader(
    samples: Sequence[Sample],
    crops: dict[str, np.ndarray],
    spec: InputSpec,
    config: TrainConfig,
    runtime: Runtime,
) -> DataLoader:
    labels = np.array([s.label for s in samples])
    targets = np.array(
        [s.soft_label if config.soft_labels else float(s.label) for s in samples], dtype=np.float32
    )
    epoch_size = config.epoch_size or len(samples)
    if epoch_size < config.batch_size * runtime.world:
        raise InputError(
            f"epoch size {epoch_size} is smaller than one batch ({config.batch_size} x {runtime.world})"
        )
    dataset = CropDataset([crops[s.id] for s in samples], targets, spec, stain=config.stain, seed=config.seed)
    sampler = BalancedSampler(
        labels, num_samples=epoch_size, seed=config.seed, rank=runtime.rank, world=runtime.world
    )
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,  # a batch of one breaks batch norm
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
    )


def _train_epoch(
    network: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
    runtime: Runtime,
    epoch: int,
) -> dict[str, float]:
    """One pass over the sampler; returns loss, learning rate, throughput and the data-wait share."""
    network.train()
    device = runtime.device
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    total_loss = torch.zeros((), device=device)
    chance_loss = torch.zeros((), device=device)  # a network that always says 50 %
    waited, seen, started = 0.0, 0, time.perf_counter()
    batches = tqdm(
        loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not runtime.show_bar
    )
    iterator = iter(batches)
    for _ in range(len(loader)):
        ready = time.perf_counter()
        images, targets = next(iterator)
        waited += time.perf_counter() - ready
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = network(images).float().reshape(-1)
        loss = focal_loss(logits, targets, config)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach()
        chance_loss += focal_loss(torch.zeros_like(logits), targets, config).detach()
        seen += len(images)
    batches.close()
    elapsed = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "lr": scheduler.get_last_lr()[0],
        "train_loss": total_loss.item() / len(loader),
        "chance_loss": chance_loss.item() / len(loader),
        "images_per_s": seen * runtime.world / elapsed,
        "data_wait_share": waited / elapsed,
        "seconds": elapsed,
    }


@torch.inference_mode()
def _validate(
    model: torch.nn.Module,
    crops: list[np.ndarray],
    labels: np.ndarray,
    spec: InputSpec,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss, AUROC and balanced accuracy at Otsu's threshold, from the live model."""
    model.eval()
    logits = []
    for start in range(0, len(crops), 2 * config.batch_size):
        batch = torch.from_numpy(prepare(crops[start : start + 2 * config.batch_size], spec)).to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits.append(model(batch).float().reshape(-1).cpu())
    logits = torch.cat(logits)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    loss = focal_loss(logits, targets, config)
    scores = torch.sigmoid(logits).double().numpy()
    balanced = binary_metrics(labels, scores, threshold=otsu_threshold(scores))["balanced_accuracy"]
    return {"val_loss": loss.item(), "val_auroc": auroc(labels, scores), "val_ba_otsu": balanced}


def _end_epoch(
    out_dir: Path,
    epoch: int,
    row: dict[str, float],
    progress: _Progress,
    parts: dict[str, Any],
    config: TrainConfig,
) -> bool:
    """Keep the best weights, save the state to resume from, rewrite metrics.csv; True to stop early."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress.best_epoch < 0 or row["val_auroc"] > progress.best_auroc:
        progress.best_epoch, progress.best_auroc = epoch, row["val_auroc"]
        models.save_weights(parts["model"], out_dir / WEIGHTS)
    progress.epoch = epoch
    progress.history.append(row)
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(progress=asdict(progress), config=asdict(config), torch_rng=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    _save_atomic(state, out_dir / LAST)
    write_rows(out_dir / METRICS, progress.history)
    if epoch == 0 and row["train_loss"] >= 0.98 * row["chance_loss"]:
        log.warning(
            "%s: after the first epoch the training loss (%.4f) is no lower than always answering "
            "50 %% (%.4f). If it stays there the network is not learning: try a lower --lr, a "
            "longer --warmup, or check --pretrained.",
            out_dir, row["train_loss"], row["chance_loss"],
        )  # fmt: skip
    log.info(
        "epoch %d/%d loss %.4f val AUROC %.4f (best %.4f @%d) BA@otsu %.3f "
        "%.0f img/s, data wait %.0f%%, %.0f s",
        epoch + 1, config.epochs, row["train_loss"], row["val_auroc"], progress.best_auroc,
        progress.best_epoch + 1, row["val_ba_otsu"], row["images_per_s"], 100 * row["data_wait_share"],
        row["seconds"],
    )  # fmt: skip
    return config.patience > 0 and epoch - progress.best_epoch >= config.patience


def _resume(out_dir: Path, parts: dict[str, Any], config: TrainConfig, device: torch.device) -> _Progress:
    """Restore the state saved after the last finished epoch, if any."""
    path = out_dir / LAST
    if not path.is_file():
        return _Progress()
    state = torch.load(path, map_location=device, weights_only=False)
    differs = config_differences(TrainConfig(**state["config"]), config)
    if differs:
        raise InputError(f"{out_dir}: was trained with other settings ({differs}); use another output folder")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu())
    progress = _Progress(**state["progress"])
    log.info("%s: resuming after epoch %d of %d", out_dir, progress.epoch + 1, config.epochs)
    return progress


def recipe(config: TrainConfig) -> dict[str, Any]:
    """The settings as provenance: a local pretrained file by name, sha256 and source, not by a
    path of the machine that trained."""
    record = asdict(config)
    if config.pretrained in (None, "hub"):
        return record
    path = Path(config.pretrained)
    record["pretrained"] = (
        {**file_record(path), **models.file_metadata(path)} if path.is_file() else path.name
    )
    return record


def file_record(path: Path) -> dict[str, str]:
    """A file named without the machine's folders: its name and sha256."""
    return {"file": path.name, "sha256": manifest.sha256_of(path)}


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between two recipes (saved, wanted), ignoring those that cannot change weights."""
    names = [f.name for f in fields(TrainConfig) if f.name not in _NEUTRAL]
    return {
        n: (getattr(saved, n), getattr(wanted, n)) for n in names if getattr(saved, n) != getattr(wanted, n)
    }


def _finish(
    out_dir: Path,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    val_crops: list[np.ndarray],
    spec: InputSpec,
    config: TrainConfig,
    progress: _Progress,
    started: float,
) -> dict[str, Any]:
    """Score the saved best weights through Ensemble (as served), write manifest and result."""
    draft = Manifest(
        architecture=config.architecture,
        input=spec,
        folds=(Fold(WEIGHTS, manifest.sha256_of(out_dir / WEIGHTS)),),
        threshold=Threshold(0.5, "placeholder"),
        name=out_dir.name,
    )
    scores = predict_crops(Ensemble.load(draft, out_dir), val_crops, spec)
    labels = np.array([s.label for s in val_samples])
    threshold = youden_threshold(labels, scores)
    write_rows(
        out_dir / VAL_PREDICTIONS,
        [
            {"id": s.id, "label": s.label, "p_atypical": repr(float(p))}
            for s, p in zip(val_samples, scores, strict=True)
        ],
    )
    result = {
        "config": recipe(config),
        "best_epoch": progress.best_epoch + 1,
        "epochs_run": progress.epoch + 1,
        "n_train": len(train_samples),
        "n_train_atypical": sum(s.label for s in train_samples),
        "validation": binary_metrics(labels, scores, threshold=threshold),
        "seconds": time.perf_counter() - started,
        "versions": _versions(),
    }
    provenance = {key: result[key] for key in ("config", "best_epoch", "n_train", "validation", "versions")}
    final = replace(
        draft, threshold=Threshold(threshold, "youden on this fold's validation set"), provenance=provenance
    )
    manifest.save(final, out_dir)
    writing.write_json_atomic(out_dir / RESULT, result)
    (out_dir / LAST).unlink()  # optimizer state is 2-3x the weights; a finished model never resumes
    log.info(
        "%s: best epoch %d, validation AUROC %.4f",
        out_dir,
        result["best_epoch"],
        result["validation"]["roc_auc"],
    )
    return result


def _versions() -> dict[str, str]:
    timm = metadata.version("timm")  # by metadata: only amf.models imports timm
    return {"amf": __version__, "torch": torch.__version__, "timm": timm, "python": platform.python_version()}


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
