"""The ``lakeinfer`` command: ``python -m lakeinfer`` and the installed console script."""

import logging
import os
import sys

from ._pipes import broken_pipe
from .cli import main


def entry() -> None:
    """:func:`lakeinfer.cli.main`, then the exit.

    After a batch job that succeeded without Spark (``main`` returns once its parts are closed,
    its table committed and its worker processes joined), the process ends without the
    interpreter's teardown: freeing the model and every module object by object took a tenth of
    a second, a tenth of a short job.
    """
    code = main()
    fast = code == 0 and sys.argv[1:2] == ["batch"] and "pyspark" not in sys.modules
    try:
        if sys.stdout is not None:  # None when the command ran with its output closed (>&-)
            sys.stdout.flush()
    except BrokenPipeError:
        code = broken_pipe()
    if fast:
        logging.shutdown()
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except BrokenPipeError:
            code = 1
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
