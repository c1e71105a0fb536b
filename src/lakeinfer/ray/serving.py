"""Ray Serve hosting: the server's app (v2 REST infer, records, health, metadata, metrics) in N
Ray Serve replicas behind Ray Serve's HTTP proxy.

Each replica is one process holding the same app as one ``lakeinfer serve`` worker: every model
built once, behind its own adaptive batcher, on the one request path. Ray replaces a replica
that dies or whose health check fails (a model that did not load).
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
from typing import Any

from ..errors import ConfigError, LakeinferError, require
from ..runtime import PipelineRecipe
from ..serve.config import ServeConfig
from .session import first_line, ray_session

__all__ = ["deployment", "run_serve"]

APP_NAME = "lakeinfer"


class Replica:
    """One Ray Serve replica: the app of one server worker, built when the replica starts."""

    def __init__(self, config: ServeConfig) -> None:
        # one process per replica: its models take the replica's own cores, no cross-worker board
        self.config = copy.copy(config)
        self.config.workers, self.config.state_dir, self.config.grpc_port = 1, None, None
        self.served: Any = None

    def __serve_build_asgi_app__(self) -> Any:  # noqa: N807 (Ray Serve's name)
        from ..serve.app import create_app

        self.served = create_app(self.config)  # not self.app: Ray Serve's wrapper has that name
        return self.served

    def check_health(self) -> None:
        """Ray's health check: a model that did not load fails it, and Ray starts a new replica."""
        plane = getattr(self.served, "plane", None)
        failed = [m for m in (plane.models.values() if plane is not None else ()) if m.load_error]
        if failed:
            raise RuntimeError(f"model '{failed[0].name}' did not load: {failed[0].load_error}")


def deployment(config: ServeConfig | None = None, *, model: str | PipelineRecipe | None = None,
               name: str | None = None, replicas: int = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, cpus_per_replica: float = 1.0,
               logging_config: dict[str, Any] | None = None, **options: Any) -> Any:
    """A Ray Serve application serving ``model`` (a path or a :class:`PipelineRecipe`), or the
    models of a whole ``config``, with the endpoints of ``lakeinfer serve``.

    ``replicas`` fixed, or ``min_replicas``/``max_replicas`` for Ray Serve's autoscaling;
    ``options`` are :class:`~lakeinfer.serve.config.ServeConfig` fields (``max_batch_size``,
    ``max_wait_ms``, ``timeout_ms``, ...). ``logging_config``: the deployment's own Ray Serve
    logging config; left out, the application's (``serve.run(..., logging_config=...)``) applies.
    Run it with ``serve.run(app, route_prefix="/")`` or compose it with your own deployments.

    A replica of one CPU scores a model's fast calls (under 20 ms) on its event loop: on one core
    a hand-off to a model thread only adds switches against Ray's own threads.
    """
    serve = require("ray.serve", "ray", "Ray Serve hosting")
    if config is None:
        if model is None:
            raise ConfigError("deployment() needs a model or a ServeConfig")
        recipe = model if isinstance(model, PipelineRecipe) else PipelineRecipe(str(model), on_error="fail")
        config = ServeConfig(recipe=recipe, name=name, **options)
    if min_replicas is not None or max_replicas is not None:
        low, high = min_replicas or 1, max_replicas or max(min_replicas or 1, replicas)
        if not 1 <= low <= high:
            raise ConfigError(f"replicas: need 1 <= min_replicas <= max_replicas, not {low} and {high}")
        scaling: dict[str, Any] = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                                          "initial_replicas": low}}
    else:
        if replicas < 1:
            raise ConfigError(f"replicas must be at least 1, not {replicas}")
        scaling = {"num_replicas": replicas}
    if cpus_per_replica <= 1 and not config.inline_calls:
        config = copy.copy(config)
        config.inline_calls = True
    ingress = serve.ingress()(Replica)
    deployed = serve.deployment(ingress, name="lakeinfer", ray_actor_options={"num_cpus": cpus_per_replica},
                                health_check_period_s=2, health_check_timeout_s=30,
                                **({"logging_config": logging_config} if logging_config is not None else {}),
                                max_ongoing_requests=max(m.max_queue or 1 for m in config.models) * 2,
                                **scaling)
    return deployed.bind(config)


def run_serve(config: ServeConfig, *, replicas: int, min_replicas: int | None, max_replicas: int | None,
              address: str | None) -> None:
    """``lakeinfer serve --engine ray``: serve until SIGTERM or Ctrl-C, then stop the app (and the
    private Ray, if this command started one)."""
    if config.grpc_port is not None:
        raise ConfigError("--grpc-port is for the local server; Ray Serve's proxy serves REST here")
    from ..serve.server import check_models, check_port, start_line

    # a model that cannot be built is one line here, not a replica's log far away
    flavors = [runtime.model.flavor for runtime in check_models(config).values()]
    check_port(config.host, config.port)
    stop = threading.Event()
    with ray_session(address, serving=True) as ray:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after Ray's start, which sets its own
        serve = require("ray.serve", "ray", "Ray Serve hosting")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        # a line per request in Ray's logs only when asked, as the local server
        app = deployment(config, replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                         logging_config={"enable_access_log": config.access_log})
        try:
            serve.start(http_options={"host": config.host, "port": config.port})
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except (RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise LakeinferError(f"Ray Serve did not start the app: {first_line(exc)}") from None
        count = f"{min_replicas or 1}-{max_replicas} replicas" if max_replicas else f"{replicas} replica" + (
            "s" if replicas != 1 else "")
        line = start_line(config, flavors).rsplit(", ", 1)[0]
        print(f"{line}, {count} on Ray Serve", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            # the replicas finish what they hold; bounded, since a Ctrl-C also reaches Ray's own
            # processes, and a shutdown waiting on one that has gone would never return
            done = threading.Thread(target=serve.shutdown, name="lakeinfer-serve-shutdown", daemon=True)
            done.start()
            done.join(config.timeout_ms / 1000.0 + 10)
