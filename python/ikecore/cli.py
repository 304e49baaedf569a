"""The ``ikecore`` command line (layer L5): argparse sub-commands, formatting only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ikecore import __version__, decode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikecore", description="IKEv1 engine and tools")
    parser.add_argument("--version", action="version", version=f"ikecore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    decode.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.handler(args))
