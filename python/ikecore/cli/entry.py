"""The ``ikecore`` command's entry point: ``ikecore monitor`` and ``ikecore terminate``
start without the rest of the command line; every other sub-command goes to
``ikecore.cli.main``.

A monitoring agent or an operator's shell loop runs ``ikecore monitor`` again and again:
importing the engine, the crypto and asyncio would cost more than the listing itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["monitor"]:
        from ikecore.monitor.cli import main as monitor_main

        return monitor_main(args[1:])
    if args[:1] == ["terminate"]:
        from ikecore.monitor.cli import terminate_main

        return terminate_main(args[1:])
    from ikecore.cli.main import main as cli_main

    return cli_main(args)
