"""The ``keras-ckpt`` command line (also ``python -m keras_ckpt``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-ckpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a tiny model and keep its best checkpoints in ./runs/demo"
    )
    demo.add_argument("--directory", default=os.path.join("runs", "demo"))
    demo.add_argument("--epochs", type=_positive_int, default=8)
    demo.add_argument("--top-k", type=_positive_int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        from keras_ckpt import demo

        return demo.main(args.directory, args.epochs, args.top_k, args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
