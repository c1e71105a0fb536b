"""``engine=ray``: the job's units scored by Ray actors, each loading the model once.

The driver plans the units with lakeinfer's own planner, skips those a previous run finished, and
hands the rest to a pool of actors. Each actor reads its own units (no separate read tasks, so
busy actors never starve the reads), scores them with the runtime and writes each unit's part
with the local engine's commit protocol (a part appears under its name only when complete). The
driver records the folder, or commits a table output in one commit. An actor that dies is
replaced and its unit is scored again, so a dead actor never hangs the job; only the driver's
death ends it, and a rerun resumes.

Without an address (``--ray-address`` or ``RAY_ADDRESS``) the job starts a private local Ray of
its own, in a temporary folder, with token authentication on and its token kept in that folder,
and stops it at the end. It never joins a ``ray start`` cluster that happens to run on the
machine. With an address, it joins that cluster and starts no Ray processes.
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
from typing import TYPE_CHECKING, Any

from .. import errors
from ..cpu import available_cores
from ..runtime import ModelRuntime, PipelineRecipe
from . import unit_worker
from .summary import BatchSummary
from .units import ProgressBar, UnitRunner, checked, run_units

if TYPE_CHECKING:
    from ..job import BatchJob

__all__ = ["ENGINE", "RayEngine", "ray_session"]

# attempts at one unit, each on a fresh actor, before the job fails naming the unit
UNIT_ATTEMPTS = 3
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class RayEngine:
    """``engine=ray``: actors on a private local Ray, or on the cluster at ``ray_address``."""

    name = "ray"

    def run(self, job: BatchJob) -> BatchSummary:
        with ray_session(job.ray_address) as ray, _messages_to_stderr():
            return run_units(job, lambda units: RayRunner(ray, job.recipe, job.workers, units))


@contextlib.contextmanager
def _messages_to_stderr() -> Iterator[None]:
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


ENGINE = RayEngine()


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected for the job: the cluster at ``address`` (or ``RAY_ADDRESS``), the one this
    process already joined, or a private local Ray started here and stopped at the end."""
    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():  # the caller's own Ray (the API inside a Ray program)
        yield imported
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:  # the token's setting first: Ray reads it when it is imported
        folder = tempfile.mkdtemp(prefix="lakeinfer-ray-")  # short: Ray's socket paths must fit 107 bytes
        saved = {name: os.environ.get(name) for name in _AUTH_VARS}
        _private_auth(folder)
    ray = errors.require("ray", "ray", "the Ray engine")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if address is not None:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise errors.ConfigError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from None
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    os.environ[SESSION_MARK] = folder  # inherited by every process of this Ray: the reaper finds them by it
    reaper = _start_reaper(folder)
    try:
        if imported is not None:  # imported before the setting: Ray's own refresh of its config
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        ray.init(address="local", num_cpus=available_cores(), _temp_dir=folder, **quiet)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        if reaper is not None:  # Ray stopped here: nothing left to reap
            reaper.kill()
            reaper.wait()
        os.environ.pop(SESSION_MARK, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


# A private Ray's processes carry this variable (its folder); the reaper stops them if the driver dies.
SESSION_MARK = "LAKEINFER_RAY_SESSION"
_REAPER = r"""
import os, shutil, signal, sys, time
driver, folder, mark = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
while True:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
needle = mark + b"=" + folder.encode()
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(folder, ignore_errors=True)
"""


def _start_reaper(folder: str) -> subprocess.Popen[bytes] | None:
    """A watcher of this process: when it ends, however it ends (kill -9 included), the private
    Ray's processes are stopped and its folder removed. Ray stops its own head processes when the
    driver dies, but not its agents, which would live on."""
    if not os.path.isdir("/proc"):  # the reaper finds the processes through /proc (Linux)
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), folder, SESSION_MARK],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


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


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class UnitActor:
    """A Ray actor: the model loaded once, in its constructor; then one unit per call."""

    def __init__(self, recipe: PipelineRecipe, threads: int) -> None:
        try:
            self.scorer = unit_worker.UnitScorer(ModelRuntime(recipe, threads=threads))
        except errors.LakeinferError as exc:  # reported with the first unit, as the real reason
            self.scorer = unit_worker.UnitScorer(None, load_error=errors.to_wire(exc))

    def run(self, unit: Any, job: unit_worker.UnitJob) -> dict[str, Any]:
        return self.scorer.run(unit, job)


class RayRunner(UnitRunner):
    """A pool of actors, one CPU each, two units in flight per actor; a dead actor is replaced."""

    overlap = True  # an actor's reads and writes are its own: ahead and behind, on its threads

    def __init__(self, ray: Any, recipe: PipelineRecipe, workers: int | None, units: int) -> None:
        self.ray = ray
        self.recipe = recipe
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers or cpus, units or 1))
        self.scorers = self.workers
        self.threads = 1
        self._actor_class = ray.remote(UnitActor).options(num_cpus=1, max_restarts=0)
        # started now: their model loads overlap the driver's checks
        self.actors = [self._new_actor() for _ in range(self.workers)]

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self.recipe, self.threads)

    def run(self, todo: list[Any], job: unit_worker.UnitJob, bar: ProgressBar) -> list[dict[str, Any]]:
        ray = self.ray
        job_ref = ray.put(job)
        queue = [(unit, 0) for unit in reversed(todo)]  # popped from the end: in order
        running: dict[Any, tuple[Any, int, int, Any]] = {}  # ref -> (unit, attempts, slot, actor)
        load = [0] * len(self.actors)
        results: list[dict[str, Any]] = []
        try:
            while queue or running:
                for slot in sorted(range(len(self.actors)), key=load.__getitem__):
                    if not queue or load[slot] >= 2:
                        continue
                    unit, attempts = queue.pop()
                    actor = self.actors[slot]
                    running[ref := actor.run.remote(unit, job_ref)] = (unit, attempts, slot, actor)
                    load[slot] += 1
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in done:
                    unit, attempts, slot, actor = running.pop(ref)
                    load[slot] -= 1
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        if attempts + 1 >= UNIT_ATTEMPTS:
                            raise errors.LakeinferError(
                                f"input file {unit.path}: the Ray actor scoring it died {UNIT_ATTEMPTS} times "
                                f"({_first_line(exc)}); rerun the job to resume it") from None
                        if self.actors[slot] is actor:  # not yet replaced for another of its units
                            self._replace(slot)
                        queue.append((unit, attempts + 1))
                        continue
                    results.append(checked(result))
                    bar.put(result.get("rows_in", 0))
        finally:
            for ref in running:
                ray.cancel(ref, force=False)
        return results

    def _replace(self, slot: int) -> None:
        """A fresh actor in the slot of one that died (it loads the model again, and counts)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor()

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
