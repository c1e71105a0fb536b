"""Runs the server: uvicorn with N worker processes, each loading the model once."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import tempfile

from ..errors import ConfigError, require
from ..runtime import ModelRuntime
from .config import CONFIG_ENV, ServeConfig
from .metrics import MULTIPROC_ENV


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight are finished before exit."""
    uvicorn = require("uvicorn", "serve", "lakeinfer serve")
    require("starlette", "serve", "lakeinfer serve")
    if config.grpc_port is not None:
        require("grpc", "serve", "lakeinfer serve --grpc-port")
        require("google.protobuf", "serve", "lakeinfer serve --grpc-port")
    config.api_key()  # fail now, not in every worker, if the key's variable is unset
    # a model or pipeline that cannot be built is a one-line error here, before any worker starts
    ModelRuntime(config.recipe).describe_outputs()
    check_port(config.host, config.port)
    if config.grpc_port is not None:
        check_port(config.host, config.grpc_port, "--grpc-port")
    state = tempfile.mkdtemp(prefix="lakeinfer-serve-")
    config.state_dir = state
    os.environ[CONFIG_ENV] = config.to_env()
    # every worker process inherits it, writes its metrics there and reads all of them on a
    # scrape; one worker runs in this process, where prometheus_client, already imported, keeps
    # them in memory
    metrics_dir = os.path.join(state, "metrics")
    os.mkdir(metrics_dir)
    os.environ[MULTIPROC_ENV] = metrics_dir
    # uvicorn drains on SIGTERM, then raises the signal again for the handler it found: a
    # drained shutdown is a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run("lakeinfer.serve.app:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=max(5, int(config.timeout_ms / 1000) + 5))
    finally:
        shutil.rmtree(state, ignore_errors=True)


def check_port(host: str, port: int, option: str = "--port") -> None:
    """A one-line error now for an address uvicorn could not bind (it would exit 3, in its words)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve on host {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # as uvicorn binds: a port whose old connections linger in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use by another process "
                                  f"(choose another with {option})") from None
            raise ConfigError(f"cannot serve on port {port} on {host}: {exc.strerror}") from None
