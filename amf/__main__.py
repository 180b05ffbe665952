"""Command-line interface: `python -m amf <command>`; each command maps to one library call."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from amf.errors import AmfError

log = logging.getLogger("amf")


def add_predict(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="classify a grand-challenge input, stack or folder")
    parser.add_argument("--input", type=Path, default=Path("/input"), help="default: /input")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="default: /output")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="ensemble folder (default: /opt/ml/model if it has a manifest, else model/)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> None:
    from amf import predict

    model_dir = args.model or predict.default_model_dir()
    predict.run(args.input, args.output, model_dir, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_predict(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an AmfError becomes one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except AmfError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
