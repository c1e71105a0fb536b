"""Runs the server: uvicorn with N worker processes, each loading the model once."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

from ..errors import require
from ..runtime import ModelRuntime
from .config import CONFIG_ENV, ServeConfig


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight are finished before exit."""
    uvicorn = require("uvicorn", "serve", "lakeinfer serve")
    require("starlette", "serve", "lakeinfer serve")
    config.api_key()  # fail now, not in every worker, if the key's variable is unset
    # a model or pipeline that cannot be built is a one-line error here, before any worker starts
    ModelRuntime(config.recipe).describe_outputs()
    state = tempfile.mkdtemp(prefix="lakeinfer-serve-")
    config.state_dir = state
    os.environ[CONFIG_ENV] = config.to_env()
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: a
    # drained shutdown is a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run("lakeinfer.serve.app:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=max(5, int(config.timeout_ms / 1000) + 5))
    finally:
        shutil.rmtree(state, ignore_errors=True)
