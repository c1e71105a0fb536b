"""``engine=ray``: the job's units scored by Ray actors, each loading the model once.

The driver plans the units with lakeinfer's own planner, skips those a previous run finished, and
hands the rest to a pool of actors. Each actor reads its own units (no separate read tasks, so
busy actors never starve the reads), scores them with the runtime and writes each unit's part
with the local engine's commit protocol (a part appears under its name only when complete). The
driver records the folder, or commits a table output in one commit. An actor that dies is
replaced and its unit is scored again, so a dead actor never hangs the job; only the driver's
death ends it, and a rerun resumes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .. import errors
from ..ray.session import first_line, messages_to_stderr, ray_session
from ..runtime import ModelRuntime, PipelineRecipe
from . import unit_worker
from .summary import BatchSummary
from .units import ProgressBar, UnitRunner, checked, run_units

if TYPE_CHECKING:
    from ..job import BatchJob

__all__ = ["ENGINE", "RayEngine", "RayRunner", "UnitActor"]

# attempts at one unit, each on a fresh actor, before the job fails naming the unit
UNIT_ATTEMPTS = 3


class RayEngine:
    """``engine=ray``: actors on a private local Ray, or on the cluster at ``ray_address``."""

    name = "ray"

    def run(self, job: BatchJob) -> BatchSummary:
        # Ray starts once the driver has checked the model on a few rows: on two cores its start
        # takes seconds, and a model that cannot be scored is one line at once. Not for a model
        # whose stages are Ray actors: the driver's check needs the Ray to put them on
        with contextlib.ExitStack() as stack:
            def runner_for(units: int) -> RayRunner:
                ray = stack.enter_context(ray_session(job.ray_address))
                stack.enter_context(messages_to_stderr())
                return RayRunner(ray, job.recipe, job.workers, units)

            return run_units(job, runner_for, runner_first=stages_on_ray(job.recipe))


ENGINE = RayEngine()


def stages_on_ray(recipe: PipelineRecipe) -> bool:
    """Whether the recipe's model is a staged model whose stages run as Ray actors (device ray)."""
    if recipe.model_flavor != "staged":
        return False
    from ..models.staged import Manifest
    from ..models.staged.ray_stages import on_ray

    devices = recipe.device.split(",") if recipe.device else list(Manifest.read(recipe.model_path).devices or [])
    return on_ray([d.strip() for d in devices])


class UnitActor:
    """A Ray actor: the model loaded once, in its constructor; then one unit per call."""

    def __init__(self, recipe: PipelineRecipe, threads: int) -> None:
        try:
            self.scorer = unit_worker.UnitScorer(ModelRuntime(recipe, threads=threads))
        except errors.LakeinferError as exc:  # reported with the first unit, as the real reason
            self.scorer = unit_worker.UnitScorer(None, load_error=errors.to_wire(exc))

    def run(self, unit: Any, job: unit_worker.UnitJob) -> dict[str, Any]:
        return self.scorer.run(unit, job)

    def loads(self) -> int:
        return self.scorer.loads


class RayRunner(UnitRunner):
    """A pool of actors, two units in flight per scoring thread; a dead actor is replaced.

    By default one single-threaded actor per CPU; on a one-node Ray (a private one, or a ``ray
    start`` of one machine), a model whose runtime takes concurrent calls (ONNX) is one actor
    holding every CPU with a scoring thread per CPU, as the local engine plans it: one model load
    and one process fewer to start per core."""

    overlap = True  # an actor's reads and writes are its own: ahead and behind, on its threads

    def __init__(self, ray: Any, recipe: PipelineRecipe, workers: int | None, units: int) -> None:
        self.ray = ray
        self.recipe = recipe
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # a model whose stages are Ray actors of their own: they hold the CPUs, a unit actor only feeds them
        staged = stages_on_ray(recipe)
        one_node = sum(1 for node in ray.nodes() if node.get("Alive")) == 1
        concurrent = workers is None and not staged and one_node and recipe.concurrent_calls
        self.workers = 1 if concurrent else max(1, min(workers or (1 if staged else cpus), units or 1))
        self.concurrency = max(1, min(cpus, units or 1)) if concurrent else 1
        self.scorers = self.workers * self.concurrency
        self.threads = self.concurrency  # scoring threads per actor
        cpus_each = 0 if staged else self.concurrency
        self._actor_class = ray.remote(UnitActor).options(num_cpus=cpus_each, max_concurrency=self.concurrency,
                                                          max_restarts=0)
        self._loaded: list[Any] = []  # each actor's loads, asked as it starts
        # started now: their model loads overlap the driver's last steps before the first unit
        self.actors = [self._new_actor() for _ in range(self.workers)] if units else []

    def _new_actor(self) -> Any:
        actor = self._actor_class.remote(self.recipe, 1)
        self._loaded.append(actor.loads.remote())  # answered once it loaded: kept if it dies later
        return actor

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
                    if not queue or load[slot] >= 2 * self.concurrency:
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
                                f"({first_line(exc)}); rerun the job to resume it") from None
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

    def model_loads(self, results: list[dict[str, Any]]) -> int:
        """Every actor's load, whether or not it returned a unit: one killed mid-unit, or a
        replacement that scored none, loaded the model too. One still loading is not waited for."""
        if not self._loaded:
            return 0
        ready, _ = self.ray.wait(self._loaded, num_returns=len(self._loaded), timeout=1.0)
        loads = 0
        for ref in ready:
            with contextlib.suppress(self.ray.exceptions.RayError):  # died before it loaded
                loads += self.ray.get(ref)
        return loads

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
