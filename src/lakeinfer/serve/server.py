"""Runs the server: uvicorn with N worker processes, each loading every model once."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from ..cpu import default_processes
from ..errors import ConfigError, LakeinferError, require
from ..runtime import ModelRuntime
from .config import CONFIG_ENV, ServeConfig
from .dataplane import model_threads
from .metrics import MULTIPROC_ENV


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; requests in flight are finished before exit."""
    uvicorn = require("uvicorn", "serve", "lakeinfer serve")
    require("starlette", "serve", "lakeinfer serve")
    require("orjson", "serve", "lakeinfer serve")
    if config.grpc_port is not None:
        require("grpc", "serve", "lakeinfer serve --grpc-port")
        require("google.protobuf", "serve", "lakeinfer serve --grpc-port")
    # a model or pipeline that cannot be built is a one-line error here, before any worker starts
    loaded = check_models(config)
    flavors = [runtime.model.flavor for runtime in loaded.values()]
    if config.workers is None:  # as the batch engine chooses (see models.default_processes); for
        # several models, the fewest any of them wants: a model that uses every core wants one process
        config.workers = min(default_processes(m.recipe.model_flavor)
                             for m in config.models)
    if config.workers != 1:
        loaded.clear()  # each worker process loads its own
    check_port(config.host, config.port)
    if config.grpc_port is not None:
        check_port(config.host, config.grpc_port, "--grpc-port")
    committer = None
    if config.ledger is not None:  # one committer, here, for every worker's WAL (docs/ledger.md)
        from ..ledger.serving import check, start_committer

        check(config)
        committer = start_committer(config)
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
    print(start_line(config, flavors), file=sys.stderr, flush=True)
    options = {"host": config.host, "port": config.port,
               "timeout_graceful_shutdown": max(5, int(config.timeout_ms / 1000) + 5), **_logging(config.access_log)}
    try:
        if loaded:  # one worker, in this process: the models checked above are the ones it serves
            from .app import create_app

            uvicorn.run(create_app(config, runtimes=loaded), **options)
        else:
            uvicorn.run("lakeinfer.serve.app:app_from_env", factory=True, workers=config.workers, **options)
    finally:
        if committer is not None:
            committer.close()  # the workers have drained: what they logged goes to the table now
        shutil.rmtree(state, ignore_errors=True)


def check_models(config: ServeConfig) -> dict[str, ModelRuntime]:
    """Every model built once here, by name, so that one that cannot be built is a one-line error
    before any worker starts (with the threads a lone worker gives it: a server of one worker
    keeps these runtimes); the API key's variable checked too."""
    config.api_key()
    loaded: dict[str, ModelRuntime] = {}
    for model in config.models:
        try:
            runtime = ModelRuntime(model.recipe, tensor_input=True, threads=model_threads(1))
            runtime.describe_outputs()
        except LakeinferError as exc:
            if len(config.models) == 1:
                raise
            raise LakeinferError(f"model '{model.name}': {exc}") from None
        loaded[model.name] = runtime
    return loaded


def start_line(config: ServeConfig, flavors: list[str]) -> str:
    """``serving NAME (flavor)[, NAME (flavor)...] on http://HOST:PORT[, gRPC PORT], N worker(s)``."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    grpc = f", gRPC {config.grpc_port}" if config.grpc_port is not None else ""
    workers = config.workers or 1
    models = ", ".join(f"{m.name} ({flavor})" for m, flavor in zip(config.models, flavors, strict=True))
    return (f"serving {models} on http://{host}:{config.port}{grpc}, "
            f"{workers} worker{'s' if workers != 1 else ''}")


def _logging(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging: its own messages from warnings up; with ``access_log``, a line per request."""
    if not access_log:
        return {"log_level": "warning", "access_log": False}
    from uvicorn.config import LOGGING_CONFIG

    settings = copy.deepcopy(LOGGING_CONFIG)
    settings["loggers"]["uvicorn.error"]["level"] = "WARNING"
    settings["loggers"]["uvicorn.access"]["level"] = "INFO"
    # no log_level: it would set the access logger's level to it too
    return {"log_config": settings, "log_level": None, "access_log": True}


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
