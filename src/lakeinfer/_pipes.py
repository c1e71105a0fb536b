"""The command's standard output when its reader goes away (``lakeinfer batch --json | head``)."""

from __future__ import annotations

import os
import sys

__all__ = ["broken_pipe", "stdout_closed"]


def broken_pipe() -> int:
    """Whoever read the standard output went away (`| head`): one line, exit 1, and no second
    error when the interpreter flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    print("lakeinfer: error: the output was not all read (broken pipe)", file=sys.stderr)
    return 1


def stdout_closed() -> bool:
    """Whether the reader of the standard output went away (a pipe's reader, which poll reports)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False
