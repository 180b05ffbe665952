"""The training recipe: every setting that decides a trained model, with its default and checks.

Light on purpose (no torch): the command line shows these defaults, `amf.recipes` names whole
sets of them, `amf.runs` decides which settings a run uses (given, else a named recipe's, else
the run folder's, else these) and `amf.train` trains with them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from amf.errors import InputError

_NEUTRAL = ("workers", "recipe_name")  # settings that cannot change the trained weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model; saved beside it and checked on resume."""

    architecture: str = "efficientvit_l2"
    size: int = 256
    pretrained: str | None = "hub"  # "hub" (timm's weights, needs the network), a file, or None
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
    teacher: tuple[str, ...] = ()  # ensemble folders on the same plan whose P(atypical) is learnt
    teacher_weight: float = 1.0  # share of each target from the teacher; the rest from the labels
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    workers: int = 2
    seed: int = 0
    recipe_name: str | None = None  # the named recipe (amf.recipes) these settings started from

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher", tuple(self.teacher))  # a list when read from run.json
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
                (
                    f"teacher weight must be in (0, 1], got {self.teacher_weight}",
                    not 0 < self.teacher_weight <= 1,
                ),
            )
            if bad
        ]
        if problems:
            raise InputError("training settings: " + "; ".join(problems))


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between two recipes (saved, wanted), ignoring those that cannot change weights."""
    names = [f.name for f in fields(TrainConfig) if f.name not in _NEUTRAL]
    return {
        n: (getattr(saved, n), getattr(wanted, n)) for n in names if getattr(saved, n) != getattr(wanted, n)
    }
