"""Running a plan: train its (domain, fold) models into one run folder, then assemble ensembles.

Layout of a run folder:

    RUN/run.json                      the plan file and training settings every model shares
    RUN/<domain>/fold<k>/             one model (see amf.train), skipped once finished
    RUN/<domain>/manifest.json        written when all folds are done: the folder is an ensemble
    RUN/<domain>/oof_predictions.csv  the folds' out-of-fold predictions behind its threshold

`assemble` can also copy an ensemble into a flat folder (fold<k>.safetensors + manifest.json),
such as the container's `model/`. Its threshold comes from the out-of-fold predictions.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from amf import distill, manifest, models, writing
from amf.config import TrainConfig, config_differences
from amf.dataset import Sample, check_images, load_table
from amf.ensemble import Ensemble
from amf.errors import InputError, ModelError
from amf.manifest import TTA_VIEWS, Manifest, Threshold
from amf.metrics import binary_metrics, choose_threshold
from amf.plan import Plan, load_plan, slug
from amf.predict import predict_crops
from amf.runtime import is_main_process
from amf.train import RESULT, VAL_PREDICTIONS, file_record, recipe, train
from amf.training_data import load_crops

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
OOF_PREDICTIONS = "oof_predictions.csv"
TEACHER_SCORES = "teacher-scores"  # a student run's cache of its teachers' scores (amf.distill)
REFIT = "refit"


def model_dir(run_dir: Path, domain: str, fold: int | None) -> Path:
    """One model's folder: `fold<k>`, or `refit` for the model trained on every crop (fold None)."""
    return ensemble_dir(run_dir, domain) / (REFIT if fold is None else f"fold{fold}")


def run_plan(
    plan_path: Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    domain: str | None = None,
    fold: int | None = None,
    index: int | None = None,
    strict: bool = False,
    refit: bool = False,
) -> list[dict[str, Any]]:
    """Train the plan's models that are not finished yet: all, one domain, one fold, or task `index`.

    Args:
        domain: a domain name or its folder name; None for every domain.
        fold: one fold of each selected domain; None for all folds.
        index: the index-th (domain, fold) of the whole plan (a cluster array job's task id).
        strict: fail when an image file is missing instead of excluding that crop.
        refit: instead of the folds, one model per selected domain on all its training crops
            (no validation: the last epoch is kept); `assemble --refit` serves it with the
            threshold of a cross-validation run of the same recipe.
    """
    if not is_main_process():  # torchrun: only the first process reports progress
        logging.getLogger("amf").setLevel(logging.WARNING)
    plan = load_plan(plan_path)
    samples = plan_samples(plan)
    tasks = select_tasks(plan, domain=domain, fold=fold, index=index)
    if refit:
        if fold is not None or index is not None:
            raise InputError("a refit trains one model per domain on all its crops: no --fold or --index")
        tasks = [(d, None) for d in dict.fromkeys(d for d, _ in tasks)]
    todo = [(d, k) for d, k in tasks if not (model_dir(run_dir, d, k) / RESULT).is_file()]
    if todo and config.pretrained is not None:  # a bad --pretrained fails before the folder and crops
        models.create(config.architecture, pretrained=config.pretrained)
    plan_sha256 = writing.sha256_of(plan_path)
    for teacher in config.teacher if todo else ():
        distill.check_teacher(Path(teacher), plan_sha256)
    _bind_run(Path(run_dir), Path(plan_path), config)
    log.info(
        "%d models selected, %d finished already, %d to train", len(tasks), len(tasks) - len(todo), len(todo)
    )
    if not todo:
        return []
    needed = {i for d, k in todo for ids in _split(plan, d, k) for i in ids}
    present = check_images([samples[i] for i in sorted(needed)], strict=strict)
    crops = load_crops(present)
    results = []
    for d, k in todo:
        train_ids, val_ids = _split(plan, d, k)
        log.info("training %s %s", d, f"fold {k}" if k is not None else "refit on every crop")
        train_samples = [samples[i] for i in train_ids if i in crops]
        val_samples = [samples[i] for i in val_ids if i in crops]
        teacher = None
        if config.teacher:
            cache = ensemble_dir(run_dir, d) / TEACHER_SCORES
            views = distill.served_views(config.teacher)
            table = distill.teacher_table(config.teacher, plan, plan_sha256, d, crops, cache, views)
            teacher = table.targets([s.id for s in train_samples], k)
        results.append(
            train(train_samples, val_samples, config, model_dir(run_dir, d, k), crops=crops, teacher=teacher)
        )
        if (
            k is not None
            and is_main_process()
            and all((model_dir(run_dir, d, f) / RESULT).is_file() for f in range(plan.n_folds))
        ):
            assemble(run_dir, d)
    return results


def _split(plan: Plan, domain: str, fold: int | None) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of a fold, or of the refit (fold None): every crop, no validation."""
    if fold is not None:
        return plan.split(domain, fold)
    return [i for ids in plan.domains[domain].folds for i in ids], []


def select_tasks(
    plan: Plan, *, domain: str | None = None, fold: int | None = None, index: int | None = None
) -> list[tuple[str, int]]:
    """The (domain, fold) pairs a command asked for; unknown ones list the valid choices."""
    tasks = plan.tasks()
    if index is not None:
        if not 0 <= index < len(tasks):
            raise InputError(f"task index {index} is outside the plan's 0..{len(tasks) - 1}")
        return [tasks[index]]
    if domain is not None:
        names = {name: name for name in plan.domains} | {slug(name): name for name in plan.domains}
        if domain not in names:
            raise InputError(f"domain {domain!r} is not in the plan; choose from {list(plan.domains)}")
        tasks = [t for t in tasks if t[0] == names[domain]]
    if fold is not None:
        if not 0 <= fold < plan.n_folds:
            raise InputError(f"fold {fold} is not in the plan; choose from 0..{plan.n_folds - 1}")
        tasks = [t for t in tasks if t[1] == fold]
    return tasks


def plan_samples(plan: Plan) -> dict[str, Sample]:
    """The plan's dataset table by sample id, refusing a table changed since the plan was made."""
    table = Path(plan.table)
    if not table.is_file():
        raise InputError(f"{table}: the plan's dataset table is missing")
    if writing.sha256_of(table) != plan.table_sha256:
        raise InputError(f"{table}: changed since the plan was made; make the plan again")
    return {s.id: s for s in load_table(table)}


@dataclass(frozen=True)
class RunRecord:
    """RUN/run.json: the plan and the training settings every model of the run shares."""

    plan: Path
    config: TrainConfig


def read_run(run_dir: Path) -> RunRecord:
    """RUN/run.json, checked; a missing or malformed one is a one-line InputError."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{path}: not a run folder (no {RUN_FILE}); train a plan into it first")
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data["plan"], str):
            raise TypeError("'plan' must be a path")
        return RunRecord(Path(data["plan"]), TrainConfig(**data["config"]))
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as error:
        raise InputError(f"{path}: malformed run record ({type(error).__name__}: {error})") from None


def load_run(run_dir: Path) -> tuple[Plan, TrainConfig]:
    """The plan and settings a run folder was trained with."""
    record = read_run(run_dir)
    return load_plan(record.plan), record.config


def settings(run_dir: Path, given: Mapping[str, Any], recipe: TrainConfig | None = None) -> TrainConfig:
    """The settings a run trains with: those given (None: not given), else the named `recipe`'s
    (amf.recipes: it sets them all), else the run folder's own (a resumed run), else TrainConfig's
    defaults. `pretrained="none"` means no pretrained weights."""
    chosen = {name: value for name, value in given.items() if value is not None}
    if chosen.get("pretrained") == "none":
        chosen["pretrained"] = None
    if recipe is not None:
        return TrainConfig(**{**asdict(recipe), **chosen})
    saved = asdict(read_run(run_dir).config) if (Path(run_dir) / RUN_FILE).is_file() else {}
    return TrainConfig(**{**asdict(TrainConfig()), **saved, **chosen})


def assemble(
    runs: Path | Sequence[Path],
    domain: str,
    target: Path | None = None,
    *,
    method: str = "youden",
    tta: str = "none",
    refit: Path | None = None,
    interpolation: str | None = None,
) -> Manifest:
    """Make one domain's fold models an ensemble, its threshold chosen on out-of-fold predictions.

    Args:
        runs: a run folder, or several trained on the same plan (say, two architectures): the
            ensemble then holds every run's folds, and each crop's out-of-fold score is the mean
            of the runs' models that did not train on it, as the ensemble will average them.
        domain: the domain whose folds to combine ('all' for an all-domains plan).
        target: a folder to copy the weights and manifest into as well (e.g. model/); needed for
            several runs. One run's own folder always gets a manifest referring to its fold
            folders, beside the out-of-fold predictions behind its threshold.
        method: 'youden' (max balanced accuracy on the OOF labels), 'otsu' (label-free) or a number.
        tta: the test-time views the ensemble is served with; each fold's validation crops are
            scored again through them, so the threshold fits the scores the container makes.
        refit: a run folder holding the same recipe's refit on every crop (`amf train --refit`):
            `target` then serves that one model, with the threshold and out-of-fold figures of
            the folds of `runs` (one run), which estimate it.
        interpolation: how every fold resizes crops of another size than its input, for runs
            whose networks resize differently (TF-slim MobileNets bilinear, EfficientNet-Lite
            bicubic); crops of the input size are used as they are.

    Raises:
        ModelError: unfinished folds, or folds that disagree on the input they expect.
        InputError: runs of different plans, several runs without a target, or a refit of
            another recipe.
    """
    runs = [Path(runs)] if isinstance(runs, str | Path) else [Path(run) for run in runs]
    if (len(runs) > 1 or refit is not None) and target is None:
        raise InputError("an ensemble of several runs, or a refit, needs a target folder (--out)")
    combined = _combine(runs, domain, method, tta, interpolation)
    if len(runs) == 1:  # the run folder always holds its latest assembly; the manifest last
        ensemble_manifest = _run_manifest(runs[0], combined)
        writing.write_rows(ensemble_dir(runs[0], combined.domain) / OOF_PREDICTIONS, combined.oof)
        manifest.save(ensemble_manifest, ensemble_dir(runs[0], combined.domain))
    if target is not None:
        sources = combined.sources() if refit is None else _refit_source(refit, runs, combined)
        ensemble_manifest = _flat_ensemble(Path(target), sources, combined, refit)
    log.info(
        "%s: %d folds, %s",
        target or runs[0],
        len(ensemble_manifest.folds),
        ensemble_manifest.threshold.method,
    )
    return ensemble_manifest


def change_views(model: Path, plan_path: Path, tta: str, method: str = "youden") -> Manifest:
    """Serve an assembled ensemble with other test-time views, its threshold and out-of-fold
    figures chosen again for them; only `manifest.json` changes.

    What `assemble --tta` would give from the runs, without them: each member scores, through
    every view, the crops of the fold it held out (amf.distill), so an ensemble can move along the
    accuracy-cost front (bench/bench_front.py) after its training folders are gone.
    """
    served = manifest.load(model)
    domain = served.provenance.get("domain", "all")
    plan = load_plan(plan_path)
    samples = plan_samples(plan)
    crops = load_crops(check_images(list(samples.values()), strict=True))
    table = distill.teacher_table(
        [model], plan, writing.sha256_of(plan_path), domain, crops, None, held_out_only=True
    )
    fold_of = {i: k for k, ids in enumerate(plan.domains[domain].folds) for i in ids}
    scores = table.out_of_fold(fold_of, range(len(served.folds)), TTA_VIEWS[tta])
    labels = np.array([samples[i].label for i in table.ids])
    threshold = _chosen_threshold(method, labels, scores, tta)
    out_of_fold = binary_metrics(labels, scores, threshold=threshold.value)
    changed = replace(
        served, tta=tta, threshold=threshold, provenance={**served.provenance, "out_of_fold": out_of_fold}
    )
    manifest.save(changed, model)
    log.info("%s: served with views %s, %s", model, tta, changed.threshold.method)
    return changed


def mix(
    models: Sequence[Path],
    plan_path: Path,
    target: Path,
    *,
    tta: str,
    method: str = "youden",
    interpolation: str | None = None,
) -> Manifest:
    """Assembled ensembles of one plan served as one new folder (say, model/'s MobileNets with a
    Lite2 ensemble), its threshold and out-of-fold figures chosen for `tta` on each crop's mean
    over the members that held it out: what `assemble` of their runs gives, from the folders alone.

    Raises:
        InputError: an ensemble of another plan, or `target` exists.
        ModelError: ensembles of different domains or inputs (`interpolation` chooses one
            resizing for all, as in `assemble`).
    """
    target = Path(target)
    if target.exists():
        raise InputError(f"{target}: exists; mix into a new folder")
    plan = load_plan(plan_path)
    models = [Path(m) for m in models]
    plan_sha256 = writing.sha256_of(plan_path)
    served = [distill.check_teacher(m, plan_sha256) for m in models]
    if interpolation is not None:
        served = [replace(s, input=replace(s.input, interpolation=interpolation)) for s in served]
    if len({s.input for s in served}) > 1:
        raise ModelError(f"cannot mix: the ensembles expect different inputs {_inputs(models, served)}")
    domains = {s.provenance.get("domain", "all") for s in served}
    if len(domains) > 1:
        raise ModelError(f"cannot mix {[str(m) for m in models]}: they were assembled for domains {domains}")
    sources = [(m, fold) for m, s in zip(models, served, strict=True) for fold in s.folds]
    architectures = [s.architecture_of(fold) for s in served for fold in s.folds]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        staging.chmod(0o755)
        files = [f"fold{k}.safetensors" for k in range(len(sources))]
        for (folder, fold), name in zip(sources, files, strict=True):
            manifest.check_sha256(folder / fold.file, fold.sha256)
            shutil.copyfile(folder / fold.file, staging / name)
            (staging / name).chmod(0o644)
        first = served[0]
        networks = "+".join(dict.fromkeys(architectures))
        provenance = {
            **{
                key: first.provenance[key]
                for key in ("plan", "table", "domain", "versions")
                if key in first.provenance
            },
            "held_out_folds": [k for s in served for k in distill.member_folds(s, plan.n_folds)],
            "training": [t for s in served for t in s.provenance.get("training", [])],
            "folds": [f for s in served for f in s.provenance.get("folds", [])],
            "mixed": [{"folder": m.name, "name": s.name} for m, s in zip(models, served, strict=True)],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        mixed = manifest.create(
            staging,
            files,
            architectures,
            input=first.input,
            threshold=first.threshold,  # chosen again below, for the mix
            name=f"{networks}-{first.input.size}px-{len(files)}fold-{slug(domains.pop())}",
            description=f"{len(files)}-fold mix of {', '.join(s.name for s in served)}",
            tta=tta,
            provenance=provenance,
        )
        manifest.save(mixed, staging)
        mixed = change_views(staging, plan_path, tta, method)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return mixed


def _flat_ensemble(
    target: Path, sources: list[tuple[Path, str]], combined: _Combined, refit: Path | None
) -> Manifest:
    """Copy the (weights, architecture) `sources` into `target` as fold<k>.safetensors (refit:
    refit.safetensors) and write its manifest."""
    target.mkdir(parents=True, exist_ok=True)
    files = [REFIT + ".safetensors"] if refit else [f"fold{k}.safetensors" for k in range(len(sources))]
    for (source, _), name in zip(sources, files, strict=True):
        shutil.copyfile(source, target / name)
        (target / name).chmod(0o644)
    fields = combined.fields
    if refit is not None:
        n_crops = len(combined.oof)
        fields = {
            **fields,
            "name": f"{combined.fold_architectures[0]}-{fields['input'].size}px-refit-"
            f"{slug(combined.domain)}",
            "description": f"one model trained on all {n_crops} crops; threshold and out-of-fold figures "
            f"from the {len(combined.dirs)}-fold run of the same recipe",
            "provenance": {
                **fields["provenance"],
                "refit": json.loads((model_dir(refit, combined.domain, None) / RESULT).read_text()),
            },
        }
    ensemble_manifest = manifest.create(target, files, [arch for _, arch in sources], **fields)
    manifest.save(ensemble_manifest, target)
    return ensemble_manifest


def recipe_differences(saved: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """config_differences, but two pretrained files of the same weights are the same start: each
    run imports a `.tflite` into its own folder (amf.tflite_import.for_run), and the metadata's
    key order in a safetensors header differs from run to run."""
    differs = config_differences(saved, wanted)
    if "pretrained" in differs and _same_weights(*(Path(str(p)) for p in differs["pretrained"])):
        del differs["pretrained"]
    return differs


def _same_weights(first: Path, second: Path) -> bool:
    """The same tensors and metadata (safetensors files), else the same bytes."""
    if not (first.is_file() and second.is_file()):
        return False
    if first.suffix == second.suffix == ".safetensors":
        ours, theirs = load_file(first), load_file(second)
        return (
            models.file_metadata(first) == models.file_metadata(second)
            and ours.keys() == theirs.keys()
            and all(np.array_equal(ours[name], theirs[name]) for name in ours)
        )
    return writing.sha256_of(first) == writing.sha256_of(second)


def _refit_source(refit: Path, runs: list[Path], combined: _Combined) -> list[tuple[Path, str]]:
    """The refit model's weights, refused unless it is the folds' recipe on their plan."""
    if len(runs) != 1:
        raise InputError("a refit is served with the threshold of one run's folds: give one --run")
    folds, trained = read_run(runs[0]), read_run(refit)
    differs = recipe_differences(folds.config, trained.config)
    if trained.plan != folds.plan or differs:
        raise InputError(
            f"{refit}: not the refit of {runs[0]}'s recipe on its plan ({differs or 'other plan'})"
        )
    folder = model_dir(refit, combined.domain, None)
    if not (folder / RESULT).is_file():
        raise ModelError(f"{folder}: the refit is not finished (train it with `amf train --refit`)")
    member = manifest.load(folder)
    manifest.check_sha256(folder / member.folds[0].file, member.folds[0].sha256)
    return [(folder / member.folds[0].file, member.architecture)]


def domain_manifest(
    run_dir: Path, domain: str, *, method: str = "youden", tta: str = "none"
) -> tuple[Manifest, list[dict[str, Any]]]:
    """One run's domain as an ensemble of its fold folders, and the out-of-fold rows behind its
    threshold; nothing is written (`assemble` writes them)."""
    combined = _combine([Path(run_dir)], domain, method, tta)
    return _run_manifest(Path(run_dir), combined), combined.oof


def _run_manifest(run_dir: Path, combined: _Combined) -> Manifest:
    """The manifest of a run's domain folder: its folds are the fold folders' weights."""
    files = [f"{d.name}/{m.folds[0].file}" for d, m in zip(combined.dirs, combined.members, strict=True)]
    return manifest.create(
        ensemble_dir(run_dir, combined.domain), files, combined.fold_architectures, **combined.fields
    )


def ensemble_dir(run_dir: Path, domain: str) -> Path:
    return Path(run_dir) / slug(domain)


@dataclass(frozen=True)
class _Combined:
    """Runs' fold models of one domain, their out-of-fold rows and the manifest fields they share."""

    domain: str
    dirs: list[Path]
    members: list[Manifest]
    oof: list[dict[str, Any]]
    fields: dict[str, Any]

    @property
    def fold_architectures(self) -> list[str]:
        return [member.architecture for member in self.members]

    def sources(self) -> list[tuple[Path, str]]:
        """Each fold's weight file and architecture, in ensemble order."""
        return [(d / m.folds[0].file, m.architecture) for d, m in zip(self.dirs, self.members, strict=True)]


def _combine(
    runs: list[Path], domain: str, method: str, tta: str, interpolation: str | None = None
) -> _Combined:
    records = [read_run(run) for run in runs]
    if len({record.plan for record in records}) > 1:
        raise InputError(
            f"runs {[str(r) for r in runs]} were trained on different plans; they cannot be mixed"
        )
    plan = load_plan(records[0].plan)
    domain = select_tasks(plan, domain=domain)[0][0]
    dirs = [model_dir(run, domain, k) for run in runs for k in range(plan.n_folds)]
    unfinished = [str(d) for d in dirs if not (d / RESULT).is_file()]
    if unfinished:
        raise ModelError(f"cannot assemble {domain!r}: unfinished folds {unfinished}")
    members = [manifest.load(d) for d in dirs]
    for d, member in zip(dirs, members, strict=True):  # a file changed since training is refused
        manifest.check_sha256(d / member.folds[0].file, member.folds[0].sha256)
    if interpolation is not None:  # resizing only: crops of the input size are not resized at all
        members = [replace(m, input=replace(m.input, interpolation=interpolation)) for m in members]
    if len({member.input for member in members}) > 1:
        hint = (
            "; they differ only in how crops of another size are resized: choose one with --interpolation"
            if len({replace(m.input, interpolation="") for m in members}) == 1
            else ""
        )
        raise ModelError(
            f"cannot assemble {domain!r}: the folds expect different inputs {_inputs(dirs, members)}{hint}"
        )
    n = plan.n_folds
    oof = _mean_rows(
        [_out_of_fold_rows(plan, dirs[i : i + n], members[i : i + n], tta) for i in range(0, len(dirs), n)]
    )
    labels = np.array([int(row["label"]) for row in oof])
    scores = np.array([float(row["p_atypical"]) for row in oof])
    threshold = _chosen_threshold(method, labels, scores, tta)
    networks = "+".join(dict.fromkeys(member.architecture for member in members))
    fields = {
        "input": members[0].input,
        "threshold": threshold,
        "name": f"{networks}-{members[0].input.size}px-{len(members)}fold-{slug(domain)}",
        "description": f"{len(members)}-fold ensemble trained on {Path(plan.table).name} "
        f"({_held_out_description(plan, domain)})",
        "tta": tta,
        "provenance": {
            "plan": file_record(records[0].plan),
            "table": {"file": Path(plan.table).name, "sha256": plan.table_sha256},
            "domain": domain,
            "held_out_folds": [k for _ in runs for k in range(n)],  # of each member: amf.distill
            "training": [recipe(record.config) for record in records],
            "versions": members[0].provenance.get("versions", {}),
            "out_of_fold": binary_metrics(labels, scores, threshold=threshold.value),
            "folds": [json.loads((d / RESULT).read_text())["validation"] for d in dirs],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    return _Combined(domain, dirs, members, oof, fields)


def _chosen_threshold(method: str, labels: np.ndarray, scores: np.ndarray, tta: str) -> Threshold:
    """The decision threshold `method` picks on out-of-fold scores made through the views `tta`."""
    try:
        value = choose_threshold(method, labels, scores)
    except ValueError as error:
        raise InputError(str(error)) from None
    return Threshold(value, f"{method} on {len(labels)} out-of-fold predictions, test-time views: {tta}")


def _inputs(dirs: list[Path], members: list[Manifest]) -> str:
    """Each distinct input with the first fold folder that expects it."""
    first = {m.input: d for d, m in reversed(list(zip(dirs, members, strict=True)))}
    return "; ".join(f"{d}: {s.size} px, mean {s.mean}, std {s.std}" for s, d in first.items())


def _mean_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each crop's out-of-fold score averaged over runs (one run: its rows as they are)."""
    if len(runs) == 1:
        return runs[0]
    scores: dict[str, list[float]] = {}
    for rows in runs:
        for row in rows:
            scores.setdefault(row["id"], []).append(float(row["p_atypical"]))
    if any(len(values) != len(runs) for values in scores.values()):
        raise InputError("the runs' validation crops differ (images missing in one?); they cannot be mixed")
    return [{**row, "p_atypical": repr(float(np.mean(scores[row["id"]])))} for row in runs[0]]


def _out_of_fold_rows(
    plan: Plan, dirs: list[Path], members: list[Manifest], tta: str
) -> list[dict[str, Any]]:
    """Each fold's validation predictions: as training wrote them, or scored again through `tta`."""
    folds = [writing.read_rows(d / VAL_PREDICTIONS) for d in dirs]
    rows = [row for fold in folds for row in fold]
    if tta != "none":
        samples = plan_samples(plan)
        crops = load_crops(check_images([samples[row["id"]] for row in rows], strict=True))
        for d, member, fold in zip(dirs, members, folds, strict=True):
            ensemble = Ensemble.load(member, d)
            scores = predict_crops(ensemble, [crops[row["id"]] for row in fold], member.input, tta=tta)
            for row, score in zip(fold, scores, strict=True):
                row["p_atypical"] = repr(float(score))
    return rows


def _bind_run(run_dir: Path, plan_path: Path, config: TrainConfig) -> None:
    """Record (or check) that every model of this run folder shares one plan and one recipe."""
    record = RunRecord(plan_path.resolve(), config)
    if (run_dir / RUN_FILE).is_file():
        saved = read_run(run_dir)
        differs = config_differences(saved.config, config)
        if saved.plan != record.plan or differs:
            raise InputError(
                f"{run_dir}: holds a run of {saved.plan} with other settings {differs}; "
                "use another run folder"
            )
    elif is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        writing.write_json_atomic(run_dir / RUN_FILE, {"plan": str(record.plan), "config": asdict(config)})


def _held_out_description(plan: Plan, domain: str) -> str:
    if plan.domain_column is None:
        return "all domains, nothing held out"
    return f"{plan.domain_column} {domain!r} held out"
