"""Command-line interface: `python -m amf <command>`; each command maps to one library call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path

from amf.errors import AmfError
from amf.manifest import EXPORTERS, INTERPOLATIONS, TTA_VIEWS, Manifest
from amf.predict import BACKENDS, BATCH_SIZE
from amf.server import HOST, PORT

log = logging.getLogger("amf")


def add_predict(commands: argparse._SubParsersAction, prog: str | None = None) -> None:
    parser = _command(commands, "predict", "classify a grand-challenge input, stack or folder", prog=prog)
    _add_job_options(parser)
    parser.set_defaults(handler=_predict)


def add_serve(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands,
        "serve",
        "grand-challenge's invoke mode: load the ensemble once, classify --input per POST /invoke",
    )
    _add_job_options(parser)
    parser.add_argument("--host", default=HOST, help="address to listen on")
    parser.add_argument("--port", type=_bounded_int(0, 65535), default=PORT, help="port (0: any free one)")
    parser.set_defaults(handler=_serve)


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    """What one job reads and writes, and how: the same for `predict` and `serve`."""
    parser.add_argument(
        "--input", type=Path, default=Path("/input"), help="crops: a folder, a stack or a crop"
    )
    parser.add_argument("--output", type=Path, default=Path("/output"), help="folder for the MIDOG JSON")
    parser.add_argument(
        "--model",
        type=Path,
        help="ensemble folder (default: /opt/ml/model if it has a manifest, else model/)",
    )
    parser.add_argument(
        "--batch-size",
        type=_bounded_int(1, 4096),
        default=BATCH_SIZE,
        help="crops per forward pass (times the views), 1-4096; memory grows with it",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="auto: ONNX Runtime if the manifest names a graph, else PyTorch (default: $AMF_BACKEND or auto)",
    )


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it has one (not for None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help
        return super()._get_help_string(action)


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, **kwargs: object
) -> argparse.ArgumentParser:
    """A subcommand whose help shows defaults; `summary` is its line in `amf --help`."""
    kwargs.setdefault("description", summary)
    return commands.add_parser(name, help=summary, formatter_class=_Help, **kwargs)


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high], else a usage error (exit 2, one line)."""

    def integer(text: str) -> int:
        value = int(text)  # a ValueError: argparse says "invalid integer value: '...'"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return integer


def _predict(args: argparse.Namespace) -> None:
    from amf import predict, writing

    writing.exit_on_terminate()

    model_dir = args.model or predict.default_model_dir()
    predict.run(args.input, args.output, model_dir, batch_size=args.batch_size, backend=args.backend)


def _serve(args: argparse.Namespace) -> None:
    from amf import predict, server

    model_dir = args.model or predict.default_model_dir()
    server.serve(
        args.input,
        args.output,
        model_dir,
        batch_size=args.batch_size,
        backend=args.backend,
        host=args.host,
        port=args.port,
    )


def add_export(commands: argparse._SubParsersAction) -> None:
    parser = _command(commands, "export-onnx", "write the ensemble as ONNX graphs checked against PyTorch")
    repo = Path(__file__).resolve().parent.parent
    parser.add_argument("--model", type=Path, default=repo / "model", help="ensemble folder")
    parser.add_argument(
        "--crops",
        type=Path,
        required=True,
        help="crops for the parity check: stack, crop or folder (in a clone: test/input)",
    )
    parser.add_argument("--max-crops", type=int, default=16, help="crops compared")
    parser.add_argument(
        "--exporter", choices=EXPORTERS, default="auto", help="auto: dynamo, else torchscript"
    )
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    from amf import onnx_export

    ensemble_manifest = onnx_export.export(
        args.model, args.crops, exporter=args.exporter, max_crops=args.max_crops
    )
    for graph in ensemble_manifest.onnx.graphs.values():
        print(f"{args.model / graph.file}: max |ONNX - PyTorch| {graph.max_abs_diff:.2g}")


def add_quantize(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands,
        "quantize",
        "add an int8 graph for the CPU, calibrated on training crops (after export-onnx)",
    )
    parser.add_argument("--model", type=Path, required=True, help="ensemble folder with an fp32 ONNX graph")
    parser.add_argument("--table", type=Path, required=True, help="dataset table of training crops")
    parser.add_argument("--crops", type=_bounded_int(16, 100_000), default=512, help="calibration crops")
    parser.add_argument("--check", type=_bounded_int(1, 100_000), default=256, help="other crops compared")
    parser.add_argument("--seed", type=int, default=0, help="which crops are drawn")
    parser.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> None:
    from amf import quantize, training_data

    calibration = training_data.sample_crops(args.table, args.crops, seed=args.seed)
    check = training_data.sample_crops(args.table, args.check, seed=args.seed, skip=args.crops)
    ensemble_manifest = quantize.quantize(args.model, calibration, check)
    graph = ensemble_manifest.onnx.graphs["int8"]
    print(f"{args.model / graph.file}: max |int8 - fp32| {graph.max_abs_diff:.3g} on {args.check} crops")


def add_dataset(commands: argparse._SubParsersAction) -> None:
    from amf.dataset import AMIBR_SPLITS, DOMAIN_COLUMNS

    parser = _command(commands, "dataset", "build the unified dataset table and print its Table 1")
    parser.add_argument("--midog25", type=Path, help="MIDOG25 Track 2 label CSV")
    parser.add_argument("--midog25-images", type=Path, help="folder of MIDOG25 crops (default: the CSV's)")
    parser.add_argument("--amibr", type=Path, help="AMi-Br folder (AMI-BR.csv, patches/) or its CSV")
    parser.add_argument("--amibr-split", choices=AMIBR_SPLITS, default="all", help="AMi-Br's published split")
    parser.add_argument("--folder", type=Path, action="append", default=[], help="ROOT/{atypical,normal}/*")
    parser.add_argument("--out", type=Path, help="write the table here (CSV)")
    parser.add_argument("--by", choices=DOMAIN_COLUMNS, default="cancer_type", help="summary column")
    parser.add_argument("--strict", action="store_true", help="fail if any image file is missing")
    parser.add_argument(
        "--link", type=Path, help="hard-link (or copy) the crops into this folder: an input for inference"
    )
    parser.set_defaults(handler=_dataset)


def _dataset(args: argparse.Namespace) -> None:
    from amf import dataset

    samples = dataset.build(
        midog25=args.midog25,
        midog25_images=args.midog25_images,
        amibr=args.amibr,
        amibr_split=args.amibr_split,
        folders=args.folder,
    )
    present = dataset.check_images(
        samples, strict=args.strict, consequence="the table keeps their labels; --link and training skip them"
    )
    print(dataset.format_summary(dataset.summary(samples, args.by), args.by.replace("_", " ").capitalize()))
    if args.out:
        log.info("%d rows -> %s", len(samples), dataset.save_table(samples, args.out))
    if args.link:
        log.info("%d crops linked into %s", dataset.link_images(present, args.link), args.link)


def add_plan(commands: argparse._SubParsersAction) -> None:
    parser = _command(commands, "plan", "write a cross-validation plan (leave-one-domain-out x folds)")
    parser.add_argument("--table", type=Path, required=True, help="dataset table from `amf dataset`")
    parser.add_argument(
        "--domain",
        default="cancer_type",
        help="column held out in turn: cancer_type, scanner, source, species; 'all': no hold-out",
    )
    parser.add_argument("--folds", type=int, default=5, help="validation folds per held-out domain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--out", type=Path, required=True, help="plan file (JSON)")
    parser.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> None:
    from amf import dataset, plan

    samples = dataset.load_table(args.table)
    column = None if args.domain == "all" else args.domain
    made = plan.make_plan(samples, table=args.table, domain_column=column, n_folds=args.folds, seed=args.seed)
    plan.save_plan(made, args.out)
    for name, split in made.domains.items():
        sizes = "/".join(str(len(f)) for f in split.folds)
        print(f"{name}: held out {len(split.test)}, validation folds {sizes}")
    log.info("%d models -> %s", len(made.tasks()), args.out)


def add_import_tflite(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands,
        "import-tflite",
        "turn a TFLite MobileNet (resources/pretrained/) into weights for `train --pretrained`",
        description="Dequantise a TF-slim MobileNet into a timm state dict (safetensors with its "
        "source sha256 and licence); with --table, re-estimate batch norm on training crops so that "
        "it fine-tunes. Example: amf import-tflite --source "
        "resources/pretrained/mobilenet_v2_1.0_224_quant.tflite --arch tf_mobilenetv2_100 "
        "--table runs/amibr-train.csv --size 128 --out runs/mobilenetv2.safetensors",
    )
    parser.add_argument("--source", type=Path, required=True, help=".tflite file")
    parser.add_argument(
        "--arch", required=True, help="the network it holds: tf_mobilenetv2_100 or tf_mobilenetv1_100"
    )
    parser.add_argument("--out", type=Path, required=True, help="weights to write (.safetensors)")
    parser.add_argument("--table", type=Path, help="dataset table whose crops calibrate batch norm")
    parser.add_argument("--crops", type=_bounded_int(16, 100_000), default=512, help="crops used")
    parser.add_argument("--size", type=_bounded_int(16, 1024), default=224, help="input size in px")
    parser.add_argument("--seed", type=int, default=0, help="which crops are drawn")
    parser.set_defaults(handler=_import_tflite)


def _import_tflite(args: argparse.Namespace) -> None:
    from amf import tflite_import, training_data

    crops = training_data.sample_crops(args.table, args.crops, seed=args.seed) if args.table else None
    metadata = tflite_import.import_tflite(args.source, args.arch, args.out, crops=crops, size=args.size)
    print(f"{args.out}: {metadata['architecture']} from {metadata['source']}; {metadata['calibration']}")


def add_train(commands: argparse._SubParsersAction) -> None:
    from amf.recipes import RECIPES
    from amf.weight_packages import PACKAGES

    parser = _command(commands, "train", "train a plan's models (skips finished ones, resumes killed ones)")
    parser.add_argument("--plan", type=Path, required=True, help="plan file from `amf plan`")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--domain", help="only this held-out domain (name or folder name)")
    parser.add_argument("--fold", type=int, help="only this fold")
    parser.add_argument("--index", type=int, help="only the index-th (domain, fold) of the plan (array jobs)")
    parser.add_argument("--strict", action="store_true", help="fail if any image file is missing")
    parser.add_argument(
        "--refit",
        action="store_true",
        help="one model per domain on all its crops, no validation (serve it with `assemble --refit`)",
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="start from this named recipe (amf/recipes.py); each setting given below overrides it",
    )
    group = parser.add_argument_group(
        "training settings",
        "each: the value given, else the --recipe's, else the run folder's (resumed), else the built-in",
    )
    setting = _setting_adder(group)
    setting("--arch", dest="architecture", help="timm model name")
    setting("--size", type=int, help="input size in px")
    setting(
        "--pretrained",
        help="'hub' (timm's ImageNet weights; needs the internet), a pinned weight package "
        f"({', '.join(PACKAGES)}: requirements-dev.txt), a weight file, a .tflite MobileNet "
        "(imported into the run folder as `import-tflite --table <plan's table>` would), or 'none'",
    )
    setting("--epochs", type=int, help="passes over the training set")
    setting("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    setting("--batch-size", type=int, help="crops per step")
    setting("--weight-decay", type=float, help="AdamW weight decay")
    setting("--warmup", type=float, help="share of steps warming up")
    setting("--stain", type=float, help="H&E jitter strength, 0 = off")
    setting("--soft-labels", action=argparse.BooleanOptionalAction, help="targets = expert vote share")
    setting("--focal-gamma", type=float, help="focal loss focusing")
    setting("--focal-alpha", type=float, help="focal loss class weight; < 0: none (the sampler balances)")
    setting("--epoch-size", type=int, help="crops drawn per epoch; none: the training set's size")
    setting("--patience", type=int, help="early stop after N epochs without better AUROC; 0: never")
    setting("--amp", action=argparse.BooleanOptionalAction, help="mixed precision on GPU")
    setting("--workers", type=int, help="data loading processes")
    setting("--seed", type=int, help="seed of initialisation, sampling and augmentation")
    setting(
        "--teacher",
        action="append",
        help="distillation: an ensemble folder assembled on this plan (repeat to mix several); each model "
        "learns the mean P(atypical) of the members that never saw its validation crops over the views "
        "each teacher is served with (its manifest's tta)",
    )
    setting(
        "--teacher-weight", type=float, help="share of each target from the teacher, the rest the label's"
    )
    parser.set_defaults(handler=_train)


def _setting_adder(group: argparse._ArgumentGroup):
    """add_argument for a TrainConfig field: no argparse default (so the run folder's can apply),
    its built-in default shown from TrainConfig itself."""
    from amf.config import TrainConfig

    defaults = TrainConfig()

    def add(flag: str, *, help: str, dest: str | None = None, **kwargs: object) -> None:
        dest = dest or flag[2:].replace("-", "_")
        value = getattr(defaults, dest)
        group.add_argument(flag, dest=dest, help=f"{help} [built-in: {value}]", **kwargs)

    return add


def _train(args: argparse.Namespace) -> None:
    from amf import recipes, runs, tflite_import
    from amf.config import TrainConfig

    given = {name: getattr(args, name, None) for name in TrainConfig.__dataclass_fields__}
    config = runs.settings(args.out, given, recipes.RECIPES.get(args.recipe))
    config = tflite_import.for_run(config, args.plan, args.out)
    runs.run_plan(
        args.plan,
        args.out,
        config,
        domain=args.domain,
        fold=args.fold,
        index=args.index,
        strict=args.strict,
        refit=args.refit,
    )


def add_assemble(commands: argparse._SubParsersAction) -> None:
    parser = _command(commands, "assemble", "combine a domain's fold models into an ensemble folder")
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        action="append",
        help="run folder from `amf train`; repeat it to mix runs of the same plan (say, two architectures)",
    )
    parser.add_argument("--domain", default="all", help="held-out domain; all: the all-domains plan")
    parser.add_argument("--out", type=Path, help="copy weights + manifest here (e.g. model/)")
    parser.add_argument("--threshold", default="youden", help="youden, otsu or a number")
    parser.add_argument(
        "--tta", choices=list(TTA_VIEWS), default="none", help="test-time views the ensemble is served with"
    )
    parser.add_argument(
        "--refit",
        type=Path,
        help="a run folder holding the refit of --run's recipe (`train --refit`): --out then serves it, "
        "with the threshold of --run's folds",
    )
    _add_interpolation(parser)
    parser.set_defaults(handler=_assemble)


def _add_interpolation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        help="how every fold resizes crops of another size (for networks that differ in this)",
    )


def _assemble(args: argparse.Namespace) -> None:
    from amf import runs

    ensemble_manifest = runs.assemble(
        args.run,
        args.domain,
        args.out,
        method=args.threshold,
        tta=args.tta,
        refit=args.refit,
        interpolation=args.interpolation,
    )
    _print_out_of_fold(ensemble_manifest)


def add_mix(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "mix", "serve assembled ensembles of one plan as one, threshold chosen again out of fold"
    )
    parser.add_argument(
        "--model", type=Path, required=True, action="append", help="assembled folder; repeat it for each"
    )
    parser.add_argument("--plan", type=Path, required=True, help="the plan they were assembled on (amf plan)")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the mix")
    parser.add_argument("--tta", choices=list(TTA_VIEWS), required=True, help="the test-time views to serve")
    parser.add_argument("--threshold", default="youden", help="youden, otsu or a number")
    _add_interpolation(parser)
    parser.set_defaults(handler=_mix)


def _mix(args: argparse.Namespace) -> None:
    from amf import runs

    mixed = runs.mix(
        args.model, args.plan, args.out, tta=args.tta, method=args.threshold, interpolation=args.interpolation
    )
    _print_out_of_fold(mixed)


def add_views(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands,
        "views",
        "serve an assembled ensemble with other test-time views, threshold chosen again out of fold",
    )
    parser.add_argument("--model", type=Path, required=True, help="assembled folder; its manifest changes")
    parser.add_argument("--plan", type=Path, required=True, help="the plan it was assembled on (amf plan)")
    parser.add_argument("--tta", choices=list(TTA_VIEWS), required=True, help="the test-time views to serve")
    parser.add_argument("--threshold", default="youden", help="youden, otsu or a number")
    parser.set_defaults(handler=_views)


def _views(args: argparse.Namespace) -> None:
    from amf import runs

    _print_out_of_fold(runs.change_views(args.model, args.plan, args.tta, args.threshold))


def _print_out_of_fold(ensemble_manifest: Manifest) -> None:
    oof = ensemble_manifest.provenance["out_of_fold"]
    print(
        f"{ensemble_manifest.name}: threshold {ensemble_manifest.threshold.value:.4f} "
        f"({ensemble_manifest.threshold.method}); "
        f"out-of-fold AUROC {oof['roc_auc']:.4f}, balanced accuracy {oof['balanced_accuracy']:.4f}"
    )


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    from amf.dataset import DOMAIN_COLUMNS

    parser = _command(commands, "evaluate", "Table 2, ROC and confusion figures for a trained run")
    parser.add_argument("--run", type=Path, required=True, help="run folder from `amf train`")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument(
        "--tta", choices=list(TTA_VIEWS), help="score with these test-time views (default: the run's)"
    )
    parser.add_argument(
        "--by",
        choices=DOMAIN_COLUMNS,
        default="cancer_type",
        help="grouping of an all-domains run's OOF predictions",
    )
    parser.add_argument("--batch-size", type=_bounded_int(1, 4096), default=64, help="crops per forward pass")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> None:
    from amf import evaluate

    report = evaluate.evaluate(args.run, args.out, tta=args.tta, by=args.by, batch_size=args.batch_size)
    print(evaluate.format_table(report))


def add_score(commands: argparse._SubParsersAction) -> None:
    from amf.dataset import DOMAIN_COLUMNS

    parser = _command(commands, "score", "the official Track 2 evaluator on a folder of output JSONs")
    parser.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="a folder of container outputs (grand-challenge's predictions.json, or "
        "<stack>/multiple-mitotic-figure-classification.json), or a folder run's predictions.csv",
    )
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--ground-truth", type=Path, help="organisers' ground_truth.json format")
    truth.add_argument("--table", type=Path, help="dataset table (labels) for a predictions.csv")
    parser.add_argument(
        "--by", choices=DOMAIN_COLUMNS, default="cancer_type", help="domain column of --table"
    )
    parser.add_argument("--out", type=Path, help="write metrics JSON here")
    parser.add_argument(
        "--confidence", default="p-atypical", help="p-atypical: as written; winning-class: 1 - it when normal"
    )
    parser.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> None:
    from amf import score, writing
    from amf.metrics import json_safe

    if args.table:
        metrics = score.score_csv(args.predictions, args.table, by=args.by)
    else:
        metrics = score.score(args.predictions, args.ground_truth, confidence=args.confidence)
    metrics = json_safe(metrics)
    print(json.dumps(metrics, indent=2))
    if args.out:
        writing.write_json_atomic(args.out, metrics)


WORKFLOW = """\
order of work (docs/training.md; model/reproduce.sh runs it end to end):
  dataset -> plan -> [import-tflite] -> train -> assemble -> export-onnx -> predict
  evaluate reports a trained run; score grades a container's outputs.

examples:
  amf predict --input crops/ --output out/      # what inference.py and ./run.sh run
  amf serve                                     # the invoke image: /input -> /output per POST /invoke
  amf dataset --amibr ami-br/ --amibr-split train --by scanner --out runs/train.csv
  amf plan --table runs/train.csv --domain all --out runs/plan.json
  amf train --plan runs/plan.json --out runs/all --recipe r4    # a named recipe: amf/recipes.py
  amf assemble --run runs/all --out model/ --tta dihedral
  amf views --model model/ --plan runs/plan.json --tta mirror  # cheaper views, threshold chosen again
  amf mix --model model/ --model runs/model-lite2 --plan runs/plan.json --tta dihedral --out runs/mixed
  amf export-onnx --model model/ --crops test/input
"""

# Each command and the function that adds its parser, in the order `amf --help` lists them. A
# parser imports what its options need (training settings: amf.config), and a run builds only the
# parser of the command it names: `predict`, which inference.py runs, loads no training module.
COMMANDS = {
    "predict": add_predict,
    "serve": add_serve,
    "export-onnx": add_export,
    "quantize": add_quantize,
    "dataset": add_dataset,
    "plan": add_plan,
    "import-tflite": add_import_tflite,
    "train": add_train,
    "assemble": add_assemble,
    "views": add_views,
    "mix": add_mix,
    "evaluate": add_evaluate,
    "score": add_score,
}


def build_parser(predict_prog: str | None = None, *, command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only `command`'s; `predict_prog` names the predict command in
    its help (inference.py is that command)."""
    parser = argparse.ArgumentParser(
        prog="amf", description=__doc__, epilog=WORKFLOW, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for name, add in {**COMMANDS, "predict": partial(add_predict, prog=predict_prog)}.items():
        if command in (None, name):
            add(commands)
    return parser


def main(argv: list[str] | None = None, *, predict_prog: str | None = None) -> int:
    """Run one command; an AmfError becomes one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # a library's warning is one log line, never a multi-line dump
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(predict_prog, command=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:  # `amf` alone: what it can do and what to run first
        parser.print_help(sys.stderr)
        return 2
    try:
        args.handler(args)
    except AmfError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
