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
import platform
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import sigmoid_focal_loss
from tqdm import tqdm

from amf import __version__, manifest, models, weight_packages, writing
from amf.config import TrainConfig, config_differences
from amf.dataset import Sample
from amf.ensemble import Ensemble
from amf.errors import InputError
from amf.manifest import InputSpec, Threshold
from amf.metrics import auroc, binary_metrics, otsu_threshold, youden_threshold
from amf.predict import predict_crops
from amf.preprocess import prepared_batches
from amf.runtime import Runtime, autocast_dtype, barrier, broadcast, parallel, seed_everything, start_runtime
from amf.training_data import BalancedSampler, CropDataset, load_crops

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
LAST = "last.pt"
METRICS = "metrics.csv"
VAL_PREDICTIONS = "val_predictions.csv"
RESULT = "result.json"


@dataclass
class _Progress:
    """What survives a kill: the last finished epoch and the best one so far."""

    epoch: int = -1
    best_epoch: int = -1
    best_auroc: float = float("-inf")
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Fit:
    """One model being trained: what each epoch updates, saves and resumes, and how it runs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    runtime: Runtime
    config: TrainConfig
    spec: InputSpec

    _SAVED = ("model", "optimizer", "scheduler", "scaler")

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in self._SAVED}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._SAVED:
            getattr(self, name).load_state_dict(state[name])

    def autocast(self) -> AbstractContextManager:
        """Mixed precision where the recipe and the device allow it, else a no-op."""
        device, dtype = self.runtime.device.type, self.amp_dtype
        return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


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
    teacher: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train one model into `out_dir` (resuming a killed run there) and return its result.

    Args:
        train_samples, val_samples: the split; their images must exist (see dataset.check_images).
            Without validation samples (a refit on every crop) the last epoch is kept.
        config: the recipe; a resumed run must use the same one.
        crops: decoded crops by sample id (from `load_crops`); decoded here when None.
        teacher: a teacher's P(atypical) by sample id (`amf.distill`), mixed into the targets
            by `config.teacher_weight`.

    Raises:
        InputError: no training samples, or a resumed folder trained with another config.
    """
    out_dir = Path(out_dir)
    if (out_dir / RESULT).is_file():
        return json.loads((out_dir / RESULT).read_text())
    if not train_samples:
        raise InputError(f"{out_dir}: training needs a non-empty training set")
    runtime = start_runtime()
    crops = crops if crops is not None else load_crops([*train_samples, *val_samples])
    spec = models.default_input_spec(config.architecture, config.size)
    loader = _loader(train_samples, crops, spec, config, runtime, teacher)
    seed_everything(config.seed)
    fit = _start(config, runtime, spec, steps=config.epochs * len(loader))
    progress = _resume(fit, out_dir)
    network = parallel(fit.model, runtime)
    val_crops = [crops[s.id] for s in val_samples]
    val_labels = np.array([s.label for s in val_samples])
    started = time.perf_counter()
    for epoch in range(progress.epoch + 1, config.epochs):
        loader.sampler.epoch = loader.dataset.epoch = epoch
        row = _train_epoch(fit, network, loader, epoch)
        stop = False
        if runtime.main:
            if val_crops:
                row.update(_validate(fit, val_crops, val_labels))
            stop = _end_epoch(fit, out_dir, row, progress)
        if broadcast(stop, runtime):
            break
    result = (
        _finish(fit, out_dir, train_samples, val_samples, val_crops, progress, started)
        if runtime.main
        else {}
    )
    barrier(runtime)
    return result


def _start(config: TrainConfig, runtime: Runtime, spec: InputSpec, *, steps: int) -> _Fit:
    """The network from the model factory, AdamW and a one-cycle schedule over all `steps`."""
    # channels-last on the CPU too: a third faster for the MobileNets and EfficientNet-Lites here
    model = models.create(config.architecture, pretrained=config.pretrained)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = autocast_dtype(config.amp, runtime.device)
    return _Fit(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=steps, pct_start=config.warmup
        ),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        runtime=runtime,
        config=config,
        spec=spec,
    )


def _loader(
    samples: Sequence[Sample],
    crops: dict[str, np.ndarray],
    spec: InputSpec,
    config: TrainConfig,
    runtime: Runtime,
    teacher: dict[str, float] | None,
) -> DataLoader:
    labels = np.array([s.label for s in samples])
    targets = np.array(
        [s.soft_label if config.soft_labels else float(s.label) for s in samples], dtype=np.float32
    )
    if teacher is not None:
        taught = np.array([teacher[s.id] for s in samples], dtype=np.float32)
        targets = config.teacher_weight * taught + (1 - config.teacher_weight) * targets
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


def _train_epoch(fit: _Fit, network: torch.nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
    """One pass over the sampler; returns loss, learning rate, throughput and the data-wait share."""
    network.train()
    device, config = fit.runtime.device, fit.config
    total_loss = torch.zeros((), device=device)
    chance_loss = torch.zeros((), device=device)  # a network that always says 50 %
    waited, seen, started = 0.0, 0, time.perf_counter()
    batches = tqdm(
        loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not fit.runtime.show_bar
    )
    iterator = iter(batches)
    for _ in range(len(loader)):
        ready = time.perf_counter()
        images, targets = next(iterator)
        waited += time.perf_counter() - ready
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with fit.autocast():
            logits = network(images).float().reshape(-1)
        loss = focal_loss(logits, targets, config)
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        fit.scheduler.step()
        total_loss += loss.detach()
        chance_loss += focal_loss(torch.zeros_like(logits), targets, config).detach()
        seen += len(images)
    batches.close()
    elapsed = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "lr": fit.scheduler.get_last_lr()[0],
        "train_loss": total_loss.item() / len(loader),
        "chance_loss": chance_loss.item() / len(loader),
        "images_per_s": seen * fit.runtime.world / elapsed,
        "data_wait_share": waited / elapsed,
        "seconds": elapsed,
    }


@torch.inference_mode()
def _validate(fit: _Fit, crops: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Validation loss, AUROC and balanced accuracy at Otsu's threshold, from the live model."""
    fit.model.eval()
    logits = []
    for batch in prepared_batches(crops, fit.spec, 2 * fit.config.batch_size):
        with fit.autocast():
            logits.append(fit.model(torch.from_numpy(batch).to(fit.runtime.device)).float().reshape(-1).cpu())
    logits = torch.cat(logits)
    loss = focal_loss(logits, torch.as_tensor(labels, dtype=torch.float32), fit.config)
    scores = torch.sigmoid(logits).double().numpy()
    balanced = binary_metrics(labels, scores, threshold=otsu_threshold(scores))["balanced_accuracy"]
    return {"val_loss": loss.item(), "val_auroc": auroc(labels, scores), "val_ba_otsu": balanced}


def _end_epoch(fit: _Fit, out_dir: Path, row: dict[str, float], progress: _Progress) -> bool:
    """Keep the best weights, save the state to resume from, rewrite metrics.csv; True to stop early."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch, config = row["epoch"] - 1, fit.config
    validated = "val_auroc" in row  # without validation (a refit) the last epoch is kept
    if not validated or progress.best_epoch < 0 or row["val_auroc"] > progress.best_auroc:
        progress.best_epoch, progress.best_auroc = epoch, row.get("val_auroc", float("-inf"))
        models.save_weights(fit.model, out_dir / WEIGHTS)
    progress.epoch = epoch
    progress.history.append(row)
    state = {**fit.state_dict(), "progress": asdict(progress), "config": asdict(config)}
    state["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    writing.write_with(out_dir / LAST, lambda tmp: torch.save(state, tmp))
    writing.write_rows(out_dir / METRICS, progress.history)
    if epoch == 0 and row["train_loss"] >= 0.98 * row["chance_loss"]:
        log.warning(
            "%s: after the first epoch the training loss (%.4f) is no lower than always answering "
            "50 %% (%.4f). If it stays there the network is not learning: try a lower --lr, a "
            "longer --warmup, or check --pretrained.",
            out_dir, row["train_loss"], row["chance_loss"],
        )  # fmt: skip
    validation = (
        f"val AUROC {row['val_auroc']:.4f} (best {progress.best_auroc:.4f} @{progress.best_epoch + 1}) "
        f"BA@otsu {row['val_ba_otsu']:.3f}"
        if validated
        else "no validation"
    )
    log.info(
        "epoch %d/%d loss %.4f %s %.0f img/s, data wait %.0f%%, %.0f s",
        epoch + 1, config.epochs, row["train_loss"], validation, row["images_per_s"],
        100 * row["data_wait_share"], row["seconds"],
    )  # fmt: skip
    return config.patience > 0 and epoch - progress.best_epoch >= config.patience


def _resume(fit: _Fit, out_dir: Path) -> _Progress:
    """Restore the state saved after the last finished epoch, if any."""
    path = out_dir / LAST
    if not path.is_file():
        return _Progress()
    state = torch.load(path, map_location=fit.runtime.device, weights_only=False)
    differs = config_differences(TrainConfig(**state["config"]), fit.config)
    if differs:
        raise InputError(f"{out_dir}: was trained with other settings ({differs}); use another output folder")
    fit.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu())
    progress = _Progress(**state["progress"])
    log.info("%s: resuming after epoch %d of %d", out_dir, progress.epoch + 1, fit.config.epochs)
    return progress


def recipe(config: TrainConfig) -> dict[str, Any]:
    """The settings as provenance: a weight package by name, version and sha256, a local
    pretrained file by name, sha256 and source, never by a path of the machine that trained."""
    record = asdict(config)
    # each teacher by the manifest that names its members and threshold
    record["teacher"] = [_folder_record(Path(folder)) for folder in config.teacher]
    if config.pretrained in (None, "hub"):
        return record
    weights = weight_packages.package(config.pretrained)
    if weights is not None:
        record["pretrained"] = {"name": weights.name, **weight_packages.provenance(weights)}
        return record
    path = Path(config.pretrained)
    record["pretrained"] = (
        {**file_record(path), **models.file_metadata(path)} if path.is_file() else path.name
    )
    return record


def _folder_record(folder: Path) -> dict[str, str] | str:
    """An ensemble folder named without the machine's folders: its name and its manifest's sha256."""
    path = folder / manifest.MANIFEST_NAME
    return {"folder": folder.name, **file_record(path)} if path.is_file() else folder.name


def file_record(path: Path) -> dict[str, str]:
    """A file named without the machine's folders: its name and sha256."""
    return {"file": path.name, "sha256": writing.sha256_of(path)}


def _finish(
    fit: _Fit,
    out_dir: Path,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    val_crops: list[np.ndarray],
    progress: _Progress,
    started: float,
) -> dict[str, Any]:
    """Score the saved best weights through Ensemble (as served), write manifest and result."""
    config = fit.config
    draft = manifest.create(
        out_dir, [WEIGHTS], config.architecture, input=fit.spec, threshold=Threshold(0.5, "placeholder")
    )
    threshold, validation = _score_validation(draft, out_dir, val_samples, val_crops)
    result = {
        "config": recipe(config),
        "best_epoch": progress.best_epoch + 1,
        "epochs_run": progress.epoch + 1,
        "n_train": len(train_samples),
        "n_train_atypical": sum(s.label for s in train_samples),
        "validation": validation,
        "seconds": time.perf_counter() - started,
        "versions": _versions(),
    }
    provenance = {key: result[key] for key in ("config", "best_epoch", "n_train", "validation", "versions")}
    final = replace(draft, name=out_dir.name, threshold=threshold, provenance=provenance)
    manifest.save(final, out_dir)
    writing.write_json_atomic(out_dir / RESULT, result)
    (out_dir / LAST).unlink()  # optimizer state is 2-3x the weights; a finished model never resumes
    kept = f"validation AUROC {validation['roc_auc']:.4f}" if validation else "no validation (a refit)"
    log.info("%s: kept epoch %d, %s", out_dir, result["best_epoch"], kept)
    return result


def _score_validation(
    draft: manifest.Manifest, out_dir: Path, val_samples: Sequence[Sample], val_crops: list[np.ndarray]
) -> tuple[Threshold, dict[str, Any] | None]:
    """The kept weights on the validation crops through Ensemble (as served): their threshold and
    metrics, the predictions written to val_predictions.csv. A refit has none."""
    if not val_samples:
        return Threshold(0.5, "none: trained on every crop (`amf assemble --refit` takes a threshold)"), None
    scores = predict_crops(Ensemble.load(draft, out_dir), val_crops, draft.input)
    labels = np.array([s.label for s in val_samples])
    threshold = youden_threshold(labels, scores)
    writing.write_rows(
        out_dir / VAL_PREDICTIONS,
        [
            {"id": s.id, "label": s.label, "p_atypical": repr(float(p))}
            for s, p in zip(val_samples, scores, strict=True)
        ],
    )
    metrics = binary_metrics(labels, scores, threshold=threshold)
    return Threshold(threshold, "youden on this fold's validation set"), metrics


def _versions() -> dict[str, str]:
    timm = metadata.version("timm")  # by metadata: only amf.models imports timm
    return {"amf": __version__, "torch": torch.__version__, "timm": timm, "python": platform.python_version()}
