"""Errors and output of native model libraries (XGBoost, LightGBM), made fit for one line."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["native_message", "native_stderr_captured"]

# dmlc's prefix: "[12:34:56] /path/to/source.cc:88: "
_LOCATION = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_LONGEST = 300


def native_message(exc: BaseException) -> str:
    """The native library's message on one line: no stack frames, no time and source location."""
    text = str(exc).split("Stack trace:", 1)[0]
    text = "".join(c if c.isprintable() else " " for c in text.replace("\n", " "))
    text = _LOCATION.sub("", " ".join(text.split()))
    if len(text) > _LONGEST:
        text = text[: _LONGEST - 3] + "..."
    return text or type(exc).__name__


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Hold what native code writes to file descriptor 2 meanwhile: the caller reports a failure
    as one line, so LightGBM's own "[Fatal]" line would only repeat it. After a success what was
    written is passed on to stderr, so a native warning is delayed, never lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            if text and not failed:
                sys.stderr.write(text)
                sys.stderr.flush()
