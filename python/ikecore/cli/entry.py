"""The ``ikecore`` command's entry point: ``ikecore monitor`` and ``ikecore terminate``
start without the rest of the command line; every other sub-command goes to
``ikecore.cli.main``.

A monitoring agent or an operator's shell loop runs ``ikecore monitor`` again and again:
importing the engine, the crypto and asyncio would cost more than the listing itself.

Exits a user can cause end quietly here, once for every sub-command: a reader that
closes the pipe early (``ikecore decode ... | head``) ends the command with status 141
(128 + SIGPIPE, what the shell reports for coreutils killed by SIGPIPE) and no message;
Ctrl-C (KeyboardInterrupt) ends it with status 130 and no traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["main", "EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED"]

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_INTERRUPTED = 128 + signal.SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # inside the try: a reader gone shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _silence_stdout()
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's own flush at exit finds
    no closed pipe (it would print 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout closed or not a file
        pass


def _dispatch(args: list[str]) -> int:
    if args[:1] == ["monitor"]:
        from ikecore.monitor.cli import main as monitor_main

        return monitor_main(args[1:])
    if args[:1] == ["terminate"]:
        from ikecore.monitor.cli import terminate_main

        return terminate_main(args[1:])
    from ikecore.cli.main import main as cli_main

    return cli_main(args)
