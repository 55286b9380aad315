"""`velo` entry point: one argparse sub-command per module in `COMMAND_MODULES`.

Each module exposes `register(subparsers)`, adding its sub-command(s) with a one-line help and
setting `func` to the handler `(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "cli.replay",
    "cli.demo",
    "cli.db",
    "cli.worker",
    "cli.publish",
    "cli.services",
    "cli.models",
    "cli.scout",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="velo",
        description="VÉLØ Oracle: real-time horse-racing market intelligence.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
