"""Command-line front: ``python -m sgdx demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgdx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the same model with torch.optim.SGD and sgdx")

    from sgdx import _demo

    _demo.add_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.lr < 0:
            parser.error(f"Invalid learning rate: {args.lr}")
        _demo.run(args.epochs, args.batch_size, args.lr, args.decay_epoch, args.dtype, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
