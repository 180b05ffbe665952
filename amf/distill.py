"""Distillation: what a teacher ensemble says about every crop of a plan, under every view.

A student (`amf train --teacher DIR`) learns the teacher's P(atypical) averaged over the views
the teacher is served with (its manifest's `tta`), while it sees one random view per draw: the
views become training augmentation, and the student needs none when served. The teacher is an
ensemble folder assembled from runs on the student's own plan (`amf assemble`); each member was
trained on one plan fold's training part, so the student of fold k learns only from the members
that never saw fold k's crops, and its out-of-fold figures stay honest. A refit student (trained
on every crop) learns from all.

The table of every member's score for every crop and view is computed once (torch, on the
CPU: about 60 passes a second a core for the MobileNets at 128 px) and cached in the student's
run folder. With all eight views it also gives each member set's out-of-fold score under any
views, which `bench/bench_front.py` and `amf views` read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from amf import manifest, writing
from amf.errors import InputError, ModelError
from amf.manifest import TTA_VIEWS, Manifest
from amf.plan import Plan
from amf.preprocess import dihedral, prepared_batches

log = logging.getLogger(__name__)

ALL_VIEWS = tuple(range(8))  # the symmetries of the square (amf.preprocess.dihedral)
FORMAT = "amf-teacher/2"


@dataclass(frozen=True)
class TeacherTable:
    """P(atypical) of each teacher member (axis 0) under each of `views` (axis 1) for each crop (axis 2)."""

    ids: tuple[str, ...]
    views: tuple[int, ...]  # the dihedral symmetry of each position on axis 1
    held_out: tuple[int, ...]  # the plan fold each member did not train on
    scores: np.ndarray

    def targets(self, ids: Sequence[str], fold: int | None) -> dict[str, float]:
        """The student's targets: the mean over the table's views of the members that held out
        plan fold `fold` (None, a refit student: of every member)."""
        members = [m for m, k in enumerate(self.held_out) if fold is None or k == fold]
        if not members:
            raise ModelError(f"the teacher has no member that held out fold {fold}")
        mean = self.scores[members].mean(axis=(0, 1))
        column = {i: c for c, i in enumerate(self.ids)}
        return {i: float(mean[column[i]]) for i in ids}

    def out_of_fold(
        self, fold_of: dict[str, int], members: Sequence[int], views: Sequence[int]
    ) -> np.ndarray:
        """Each crop's mean score over `views` and over those of `members` that held out its fold."""
        positions = [self.views.index(v) for v in views]
        chosen = self.scores[np.ix_(list(members), positions)].mean(axis=1)
        held = np.array([self.held_out[m] for m in members])
        folds = np.array([fold_of[i] for i in self.ids])
        mask = held[:, None] == folds[None, :]
        if not mask.any(axis=0).all():
            raise ModelError("some crops have no member that held out their fold")
        return (chosen * mask).sum(axis=0) / mask.sum(axis=0)


def member_folds(teacher: Manifest, n_folds: int) -> tuple[int, ...]:
    """The plan fold each member held out: `assemble` lists each run's folds in plan order.

    A model refit on every crop held none out: it can neither teach a fold's student nor be
    scored out of fold (its recorded folds are its cross-validation run's), so it is refused.
    """
    if "refit" in teacher.provenance:
        raise ModelError(
            f"{teacher.name} was refit on every crop and held no fold out: use the folder "
            "assembled from its cross-validation run (amf assemble --run RUN, without --refit)"
        )
    recorded = teacher.provenance.get("held_out_folds")
    if recorded is not None:
        return tuple(int(k) for k in recorded)
    if len(teacher.folds) % n_folds:
        raise ModelError(f"a teacher of {len(teacher.folds)} members does not fit a {n_folds}-fold plan")
    return tuple(i % n_folds for i in range(len(teacher.folds)))


def served_views(teachers: Sequence[Path]) -> tuple[int, ...]:
    """The views the teachers are served with (each manifest's `tta`): what a student learns."""
    return tuple(sorted({v for t in teachers for v in TTA_VIEWS[manifest.load(Path(t)).tta]}))


def check_teacher(teacher_dir: Path, plan_sha256: str) -> Manifest:
    """The teacher's manifest, refused unless it was assembled on the student's plan: a student
    learns only from members that never saw its validation crops."""
    teacher = manifest.load(teacher_dir)
    recorded = teacher.provenance.get("plan", {}).get("sha256")
    if recorded != plan_sha256:
        raise InputError(
            f"{teacher_dir}: the teacher was assembled on another plan (plan sha256 {recorded}, "
            f"the student's {plan_sha256}); its members must not have seen the student's validation crops"
        )
    return teacher


def teacher_table(
    teachers: Sequence[Path],
    plan: Plan,
    plan_sha256: str,
    domain: str,
    crops: dict[str, np.ndarray],
    cache: Path | None,
    views: Sequence[int] = ALL_VIEWS,
    held_out_only: bool = False,
) -> TeacherTable:
    """Every member of the ensembles in `teachers` on every crop of `domain`, under `views`.

    Each member's scores are kept in `cache` (a folder, one file per member weights' sha256), so
    a student of other settings, or of another mix of the same members, scores nothing twice.
    `held_out_only`: each member scores only the crops of the fold it held out (zero elsewhere):
    all that out-of-fold figures need, at 1/n_folds of the work; such a table teaches no student.

    Raises:
        InputError: a teacher was assembled on another plan.
        ModelError: its members do not fit the plan's folds.
    """
    ids = tuple(i for fold in plan.domains[domain].folds for i in fold if i in crops)
    held_out, scores = [], []
    for teacher_dir in teachers:
        teacher = check_teacher(Path(teacher_dir), plan_sha256)
        folds = member_folds(teacher, plan.n_folds)
        held_out += folds
        for member, (fold, k) in enumerate(zip(teacher.folds, folds, strict=True)):
            held = set(plan.domains[domain].folds[k]) if held_out_only else set(ids)
            member_ids = tuple(i for i in ids if i in held)
            path = None
            if cache is not None:
                sha256 = fold.sha256 or writing.sha256_of(Path(teacher_dir) / fold.file)
                path = Path(cache) / f"{sha256}{'-held-out' if held_out_only else ''}.npz"
            member_scores = None if path is None else _read(path, member_ids, views)
            if member_scores is None:
                member_crops = [crops[i] for i in member_ids]
                member_scores = _member_views(teacher, member, Path(teacher_dir), member_crops, views)
                if path is not None:
                    _write(path, member_ids, views, member_scores)
            spread = np.zeros((len(views), len(ids)), np.float32)
            spread[:, [c for c, i in enumerate(ids) if i in held]] = member_scores
            scores.append(spread)
    return TeacherTable(ids, tuple(views), tuple(held_out), np.stack(scores))


def _member_views(
    teacher: Manifest, member: int, teacher_dir: Path, crops: list[np.ndarray], views: Sequence[int]
) -> np.ndarray:
    """(views, crops) P(atypical) of one member, as the container would score each view."""
    from amf.ensemble import Ensemble  # torch: training only

    started = time.perf_counter()
    network = Ensemble.load(replace(teacher, folds=(teacher.folds[member],)), teacher_dir)
    columns = [
        np.stack([network.predict(dihedral(batch, k, axes=(-2, -1))) for k in views])
        for batch in prepared_batches(crops, teacher.input, 64)
    ]
    log.info(
        "%s member %d/%d (%s): %d crops x %d views in %.0f s",
        teacher_dir.name, member + 1, len(teacher.folds), teacher.architecture_of(teacher.folds[member]),
        len(crops), len(views), time.perf_counter() - started,
    )  # fmt: skip
    return np.concatenate(columns, axis=1).astype(np.float32)


def _write(path: Path, ids: tuple[str, ...], views: Sequence[int], scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a path not ending in .npz would get one appended
            np.savez(handle, format=np.array(FORMAT), ids=np.array(ids), views=np.array(views), scores=scores)

    writing.write_with(path, save)


def _read(path: Path, ids: tuple[str, ...], views: Sequence[int]) -> np.ndarray | None:
    """A member's cached (views, crops) scores, or None when absent or made for other crops or views."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if (
                str(data["format"]) != FORMAT
                or tuple(str(i) for i in data["ids"]) != ids
                or tuple(int(v) for v in data["views"]) != tuple(views)
            ):
                return None
            return data["scores"]
    except (OSError, ValueError, KeyError):
        return None
