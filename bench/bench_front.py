"""The accuracy-cost front: out-of-fold accuracy beside what each candidate costs on this machine.

Accuracy, on the card's 5-fold plan of the AMi-Br training split (never the test split):

- teacher ensembles: every mix of the teachers' networks under 1, 2, 4 or 8 dihedral views, from
  each member's scores on the crops of the fold it held out (amf.distill.teacher_table,
  held_out_only; kept in --cache between runs): a crop is scored by the members that never saw
  it, one per network. A mix of fewer networks is also an ensemble of fewer folds (5 per network);
- the student: its cross-validation run's folds on their validation crops, fp32 and int8
  (each fold exported and quantised, calibrated on that fold's training crops), 1, 2, 4 and 8 views.

Cost, measured here on served folders through `python inference.py`, alternated with the
organisers' reference approach (bench/reference.py) in the same run: ms per crop in a folder run
(steady rate between two folder sizes), cold start on one 16-crop stack, peak RSS, and the bytes
the served path reads (graph plus the fold files it reads its weights from).

Usage:
    python bench/bench_front.py --plan PLAN --teacher DIR [--teacher DIR ...]
        [--student-run RUN --student DIR] [--cache DIR] [--accuracy-only] [--out FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from bench_folder import folder_of
from bench_inference import AMIBR_PATCHES, STACK, emit, heading, log, run_child
from reference import save_random_weights

from amf import distill, manifest, onnx_export, quantize, writing  # noqa: E402
from amf.ensemble import Ensemble  # noqa: E402
from amf.manifest import TTA_VIEWS  # noqa: E402
from amf.metrics import auroc, binary_metrics, youden_threshold  # noqa: E402
from amf.onnx_runtime import CPU, OnnxEnsemble, open_session  # noqa: E402
from amf.plan import load_plan  # noqa: E402
from amf.predict import predict_crops  # noqa: E402
from amf.runs import model_dir, plan_samples, read_run  # noqa: E402
from amf.training_data import load_crops  # noqa: E402

VIEW_SETS = {1: "none", 2: "mirror", 4: "flips", 8: "dihedral"}
SHORT = {
    "tf_mobilenetv2_100": "MNv2",
    "tf_mobilenetv1_100": "MNv1",
    "tf_efficientnet_lite0": "Lite0",
    "tf_efficientnet_lite1": "Lite1",
    "tf_efficientnet_lite2": "Lite2",
}


@dataclass(frozen=True)
class Accuracy:
    name: str
    key: tuple  # (networks, views) of a teacher mix, ("student", precision, views) of the student
    auroc: float
    balanced: float  # at the Youden threshold of the same scores (in-sample, as in the card)
    passes: int  # network passes per crop when served with 5 folds (members x views)


@dataclass(frozen=True)
class Cost:
    name: str
    key: tuple  # the Accuracy row whose out-of-fold figures this served folder has
    ms_per_crop: float
    cold_s: float
    peak_mib: float
    megabytes: float


def oof_accuracy(name: str, key: tuple, labels: np.ndarray, scores: np.ndarray, passes: int) -> Accuracy:
    metrics = binary_metrics(labels, scores, threshold=youden_threshold(labels, scores))
    return Accuracy(name, key, auroc(labels, scores), metrics["balanced_accuracy"], passes)


def member_networks(teachers: list[Path]) -> list[tuple[str, int]]:
    """Each teacher member's network, in teacher_table's order: its short name (with its input size
    when the teachers' sizes differ) and input size."""
    members = [
        (served.architecture_of(fold), served.input.size)
        for served in map(manifest.load, teachers)
        for fold in served.folds
    ]
    several = len({size for _, size in members}) > 1
    return [(SHORT.get(a, a) + (f" {size}px" if several else ""), size) for a, size in members]


def mixes(members: list[tuple[str, int]]) -> list[tuple[str, ...]]:
    """Every combination of the members' networks, one network or more."""
    networks = list(dict.fromkeys(name for name, _ in members))
    return [mix for count in range(1, len(networks) + 1) for mix in itertools.combinations(networks, count)]


def teacher_fronts(
    table: distill.TeacherTable, members: list[tuple[str, int]], fold_of: dict, labels: np.ndarray
) -> list[Accuracy]:
    """Every mix of the teachers' networks, under each view count."""
    rows = []
    for mix in mixes(members):
        chosen = [m for m, (name, _) in enumerate(members) if name in mix]
        for views, tta in VIEW_SETS.items():
            scores = table.out_of_fold(fold_of, chosen, TTA_VIEWS[tta])
            name = f"{'+'.join(mix)}, {views} views"
            rows.append(oof_accuracy(name, (frozenset(mix), views), labels, scores, len(chosen) * views))
    return rows


def student_fronts(run: Path, plan, crops: dict, labels_of: dict, work: Path) -> list[Accuracy]:
    """The student's folds on their own validation crops: fp32 and int8, under each view count."""
    ids, scores = [], {(p, v): [] for p in ("fp32", "int8") for v in VIEW_SETS}
    for k in range(plan.n_folds):
        folder = model_dir(run, "all", k)
        train_ids, val_ids = plan.split("all", k)
        fold_crops = [crops[i] for i in val_ids]
        ids += val_ids
        member = manifest.load(folder)
        served = {
            "fp32": Ensemble.load(member, folder),
            "int8": _int8_fold(
                folder, work / f"fold{k}", [crops[i] for i in train_ids[:512]], fold_crops[:64]
            ),
        }
        for (precision, views), column in scores.items():
            column += list(predict_crops(served[precision], fold_crops, member.input, tta=VIEW_SETS[views]))
    labels = np.array([labels_of[i] for i in ids])
    arch = SHORT.get(member.architecture, member.architecture)
    return [
        oof_accuracy(f"student {arch} {p}, {v} views", ("student", p, v), labels, np.array(s), v)
        for (p, v), s in scores.items()
    ]


def _int8_fold(folder: Path, work: Path, calibration: list, check: list) -> OnnxEnsemble:
    """A fold's int8 graph, exported and quantised in `work` (its training crops calibrate it)."""
    copy = _int8_copy(folder, work, calibration, check)
    return OnnxEnsemble(open_session(copy / quantize.FILE, [CPU]), str(copy))


def _int8_copy(folder: Path, work: Path, calibration: list, check: list) -> Path:
    """A copy of `folder` in `work` with its graphs exported and an int8 graph made, whatever
    its difference from fp32 (what int8 costs is scored, not refused)."""
    copy = Path(shutil.copytree(folder, work))
    onnx_export.export(copy, STACK)
    quantize.quantize(copy, calibration, check, tolerance=1.0)
    return copy


def linked(folder: Path, target: Path, change) -> Path:
    """`folder`'s files hard-linked into `target`, its manifest passed through `change`."""
    target.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file() and path.name != manifest.MANIFEST_NAME:
            (target / path.name).hardlink_to(path)
    manifest.save(change(manifest.load(folder)), target)
    return target


def fp32_only(served: manifest.Manifest) -> manifest.Manifest:
    graphs = {v: g for v, g in served.onnx.graphs.items() if v != "int8"}
    return replace(served, onnx=replace(served.onnx, graphs=graphs))


def mix_folder(
    teachers: list[Path], members: list[tuple[str, int]], mix: tuple[str, ...], target: Path
) -> Path:
    """The teachers' members of the networks in `mix` in one folder, exported (for its cost: the
    threshold is the first teacher's and the input its spec; crops here are never resized)."""
    target.mkdir(parents=True)
    files, fold_architectures = [], []
    names = iter(name for name, _ in members)
    for teacher in teachers:
        served = manifest.load(teacher)
        for fold in served.folds:
            if next(names) in mix:
                files.append(f"fold{len(files)}.safetensors")
                (target / files[-1]).hardlink_to(teacher / fold.file)
                fold_architectures.append(served.architecture_of(fold))
    first = manifest.load(teachers[0])
    threshold = manifest.Threshold(first.threshold.value, "the first teacher's (cost only)")
    manifest.save(
        manifest.create(target, files, fold_architectures, input=first.input, threshold=threshold), target
    )
    onnx_export.export(target, STACK)
    return target


def served_megabytes(folder: Path) -> float:
    """What the CPU path reads: its graph and the fold files that graph reads weights from."""
    served = manifest.load(folder)
    graph = served.onnx.graphs.get("int8") or served.onnx.graphs["fp32"]
    files = {graph.file, *graph.data_files}
    return sum((folder / f).stat().st_size for f in files) / 1e6


def served_folders(
    args: argparse.Namespace, members: list[tuple[str, int]], crops: list, work: Path
) -> dict[str, tuple[tuple, Path]]:
    """The folders whose cost is measured, by name, with the Accuracy key of their OOF figures:
    every mix of the teachers' networks of one input size under every view count (one folder
    serves one input); the student fp32 and int8 under every view count when one is given (its
    int8 graph made here on `crops` when its folder has none)."""
    folders = {}
    for number, mix in enumerate(mixes(members)):
        if len({size for name, size in members if name in mix}) > 1:
            continue
        mixed = mix_folder(args.teacher, members, mix, work / f"mix{number}")
        label = f"{'+'.join(mix)} ({len(manifest.load(mixed).folds)} folds)"
        for views, tta in VIEW_SETS.items():
            target = work / f"{mixed.name}-{views}"
            change = lambda m, t=tta: replace(m, tta=t)  # noqa: E731
            folders[f"{label}, {views} views"] = ((frozenset(mix), views), linked(mixed, target, change))
    if args.student is None:
        return folders
    student = args.student
    if "int8" not in manifest.load(student).onnx.graphs:
        drawn = [crops[i] for i in np.random.default_rng(0).permutation(len(crops))[:576]]
        student = _int8_copy(student, work / "student", drawn[:512], drawn[512:])
    for views, tta in VIEW_SETS.items():
        for precision in ("fp32", "int8"):
            change = (
                (lambda m, t=tta: replace(fp32_only(m), tta=t))
                if precision == "fp32"
                else (lambda m, t=tta: replace(m, tta=t))
            )
            target = work / f"student-{precision}-{views}"
            name = f"student {precision}, {views} views"
            folders[name] = (("student", precision, views), linked(student, target, change))
    return folders


def measure_costs(
    folders: dict[str, tuple[tuple, Path]], crops: list[Path], rounds: int, work: Path
) -> list[Cost]:
    """Cold start (alternated with the reference, `rounds` times) and steady folder rate of each."""
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "reference.pt"
    save_random_weights(weights)
    reference = [sys.executable, "bench/reference.py", "--weights", str(weights)]
    commands = {"reference approach": reference} | {
        name: [sys.executable, "inference.py", "--model", str(folder)]
        for name, (_, folder) in folders.items()
    }
    out = ["--output", str(work / "out")]
    cold: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_ in range(rounds):
        for name in list(commands) if round_ % 2 == 0 else list(reversed(commands)):
            wall, peak, _ = run_child([*commands[name], "--input", str(STACK), *out], work)
            cold[name].append((wall, peak))
            log.info("round %d/%d: %s cold %.1f s, %.0f MiB", round_ + 1, rounds, name, wall, peak)
    costs = []
    for name, command in commands.items():
        log.info("steady folder rate of %s", name)
        key, folder = folders.get(name, ((), None))
        walls, peaks = zip(*cold[name], strict=True)
        size = served_megabytes(folder) if folder else 0.0
        costs.append(
            Cost(name, key, _steady_ms(command, crops, work), statistics.median(walls), max(peaks), size)
        )
    return costs


def _steady_ms(command: list[str], crops: list[Path], work: Path) -> float:
    """ms per crop between a 16-crop and a larger folder run (start-up left out); the larger run
    is sized to take about 20 s more."""
    runs = len(list(work.glob("in-*")))
    small = folder_of(crops[:16], work / f"in-{runs}")
    first = run_child([*command, "--input", str(small), *["--output", str(work / "out")]], work)[0]
    count = int(min(len(crops), max(64, 16 + 20 * 16 / first)))
    large = folder_of(crops[:count], work / f"in-{runs + 1}")
    second = run_child([*command, "--input", str(large), *["--output", str(work / "out")]], work)[0]
    return 1000 * max(second - first, 1e-6) / (count - 16)


def plot(rows: list[tuple[Cost, Accuracy]], reference_ms: float, path: Path) -> None:
    """OOF AUROC against measured ms per crop of every served folder; the reference's cost marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    for cost, accuracy in rows:
        student = cost.name.startswith("student")
        point = (cost.ms_per_crop, accuracy.auroc)
        style = {"s": 60, "marker": "*", "c": "C3"} if student else {"s": 35, "marker": "o", "c": "C0"}
        axes.scatter(*point, **style)
        axes.annotate(cost.name, point, fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes.axvline(reference_ms, color="grey", linestyle="--", label="organisers' reference approach (cost)")
    axes.set(xscale="log", xlabel="ms per crop, folder run on 2 CPU cores", ylabel="out-of-fold ROC AUC")
    students = any(cost.name.startswith("student") for cost, _ in rows)
    axes.set_title("Accuracy against cost of served folders" + (" (students: stars)" if students else ""))
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="the teachers' and student's 5-fold plan")
    parser.add_argument(
        "--teacher", type=Path, action="append", required=True, help="teacher ensemble folder"
    )
    parser.add_argument("--student-run", type=Path, help="the student's cross-validation run")
    parser.add_argument("--student", type=Path, help="the served student (its int8 graph made if missing)")
    parser.add_argument("--rounds", type=int, default=3, help="cold starts of each, alternated")
    parser.add_argument("--cache", type=Path, help="keep each member's scores here for the next run")
    parser.add_argument(
        "--accuracy-only", action="store_true", help="the out-of-fold table only, no served folder measured"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = os.getloadavg()[0]

    plan = load_plan(args.plan)
    samples = plan_samples(plan)
    crops = load_crops(list(samples.values()))
    fold_of = {i: k for k, ids in enumerate(plan.domains["all"].folds) for i in ids}
    table = distill.teacher_table(
        args.teacher, plan, writing.sha256_of(args.plan), "all", crops, args.cache, held_out_only=True
    )
    labels = np.array([samples[i].label for i in table.ids])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        members = member_networks(args.teacher)
        accuracy = teacher_fronts(table, members, fold_of, labels)
        if args.student_run:
            label_of = {i: s.label for i, s in samples.items()}
            accuracy += student_fronts(args.student_run, plan, crops, label_of, work)
        if args.accuracy_only:
            emit([*heading("Out-of-fold accuracy on the 5-fold plan"), *accuracy_lines(accuracy)], args.out)
            return
        images = sorted(AMIBR_PATCHES.rglob("*.png"))
        folders = served_folders(args, members, list(crops.values()), work / "served")
        costs = measure_costs(folders, images, args.rounds, work / "cost")
    student_config = read_run(args.student_run).config if args.student_run else None
    report(args, accuracy, costs, student_config, load_before)


def report(
    args: argparse.Namespace, accuracy: list[Accuracy], costs: list[Cost], student_config, load_before: float
) -> None:
    best = max(accuracy, key=lambda row: row.auroc)
    by_key = {row.key: row for row in accuracy}
    reference = next(c for c in costs if c.name == "reference approach")
    served = [(c, by_key[c.key]) for c in costs if c.key in by_key]
    within = [(c, a) for c, a in served if a.auroc >= best.auroc - 0.005]
    # Fewest network passes first: a count, which a loaded machine cannot reorder as it can the ms.
    fewest = min(within, key=lambda pair: (pair[1].passes, pair[0].ms_per_crop), default=None)
    cheapest = fewest[0].name if fewest else "none"
    lines = [
        *heading("Accuracy-cost front (out of fold on the 5-fold plan; cost of served folders)"),
        f"Best out of fold: {best.name}, ROC AUC {best.auroc:.4f}. The cheapest served folder "
        f"within 0.005 of it (fewest network passes per crop, then fewest ms): **{cheapest}**. "
        + (f"Student recipe: `{json.dumps(asdict(student_config))}`." if student_config else "No student."),
        "",
        f"Load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: the "
        "costs were measured beside other work when it is high (cold starts alternated with the reference).",
        "",
        "| served (`python inference.py`, 2 CPUs) | OOF ROC AUC | OOF BA | ms per crop | crops/s | "
        "cold start s (x ref.) | peak RSS MiB (x ref.) | MB read |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {c.name} | {a.auroc:.4f} | {a.balanced:.4f} | {c.ms_per_crop:.2f} | "
            f"{1000 / c.ms_per_crop:.0f} | {c.cold_s:.2f} ({c.cold_s / reference.cold_s:.2f}) | "
            f"{c.peak_mib:.0f} ({c.peak_mib / reference.peak_mib:.2f}) | {c.megabytes:.1f} |"
            for c, a in sorted(served, key=lambda pair: pair[0].ms_per_crop)
        ),
        f"| reference approach (EfficientNetV2-M, 1 crop per call) | | | {reference.ms_per_crop:.2f} | "
        f"{1000 / reference.ms_per_crop:.1f} | {reference.cold_s:.2f} | {reference.peak_mib:.0f} | |",
        "",
        *accuracy_lines(accuracy),
    ]
    emit(lines, args.out)
    if args.plot:
        plot(served, reference.ms_per_crop, args.plot)


def accuracy_lines(accuracy: list[Accuracy]) -> list[str]:
    """The out-of-fold table: every mix of the teachers' networks and the student, best first."""
    best = max(row.auroc for row in accuracy)
    return [
        "Every mix of the teachers' networks and the student, out of fold (passes: per crop, 5 folds):",
        "",
        "| out of fold | ROC AUC | balanced acc. (Youden) | passes per crop | within 0.005 of the best |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {row.name} | {row.auroc:.4f} | {row.balanced:.4f} | {row.passes} | "
            f"{'yes' if row.auroc >= best - 0.005 else ''} |"
            for row in sorted(accuracy, key=lambda row: -row.auroc)
        ),
    ]


if __name__ == "__main__":
    main()
