"""Command-line front: ``python -m sgdx demo`` and ``python -m sgdx compare``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from sgdx import _compare, _demo

    parser = argparse.ArgumentParser(prog="python -m sgdx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the same model with torch.optim.SGD and sgdx")
    _demo.add_arguments(demo)
    compare = commands.add_parser(
        "compare", help="run one problem under PyTorch's and Sutskever's momentum, side by side"
    )
    _compare.add_arguments(compare)
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            import sklearn  # noqa: F401
            import torch  # noqa: F401
        except ImportError as error:
            demo.error(
                f"the demo trains with torch on scikit-learn's digits ({error}): "
                "pip install 'sgdx[demo]'"
            )
        if args.lr < 0:
            demo.error(f"Invalid learning rate: {args.lr}")
        _demo.run(args.epochs, args.batch_size, args.lr, args.decay_epoch, args.dtype, args.seed)
    else:
        _compare.run(args, compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
