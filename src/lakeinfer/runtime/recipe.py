"""A picklable recipe for a pipeline: the model's location and options plus the other steps.

Worker processes receive the recipe, not the loaded model, and build it exactly once.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .._spec_schema import validate_step
from ..cpu import CONCURRENT_FLAVORS
from ..errors import ConfigError
from ..models import Model, detect_flavor, load_model, model_digest
from ..pipeline import ModelStep, Pipeline, Transformer, step_from_dict

__all__ = ["MODEL", "PipelineRecipe"]

MODEL = "model"  # marks the model's place among the steps


@dataclass(frozen=True)
class PipelineRecipe:
    """How to build the pipeline: ``steps`` are transformers, step dicts or ``MODEL``."""

    model_path: str
    flavor: str | None = None
    trust: bool = False
    features: tuple[str, ...] | None = None
    device: str | None = None
    signature: str | None = None  # a TensorFlow SavedModel's signature (None: serving_default)
    on_error: str = "fail"
    steps: tuple[Any, ...] = (MODEL,)

    def __post_init__(self) -> None:
        steps = [self._step(s, i) for i, s in enumerate(self.steps)]
        if MODEL not in steps:
            steps.append(MODEL)
        if steps.count(MODEL) > 1:
            raise ConfigError("a pipeline holds one model step")
        for step in steps:
            if step != MODEL and not isinstance(step, Transformer):
                raise ConfigError(f"pipeline step {step!r} is neither a Transformer nor a step spec")
        object.__setattr__(self, "steps", tuple(steps))
        if self.features is not None:
            object.__setattr__(self, "features", tuple(self.features))

    @staticmethod
    def _step(step: Any, index: int) -> Any:
        if not isinstance(step, Mapping):
            return step
        if step.get("op") == MODEL:
            validate_step(step, index=index)  # {"op": "model"} takes no options either
            return MODEL
        return step_from_dict(step, index=index)

    def load_model(self, *, threads: int | None = None) -> Model:
        return load_model(self.model_path, flavor=self.flavor, trust=self.trust,
                          features=self.features, threads=threads, device=self.device,
                          signature=self.signature)

    def build(self, *, threads: int | None = None, model: Model | None = None) -> Pipeline:
        """The pipeline, loading the model unless one is given."""
        model = model or self.load_model(threads=threads)
        named: list[tuple[str, Transformer]] = []
        for i, step in enumerate(self.steps):
            if step == MODEL:
                named.append(("model", ModelStep(model, on_error=self.on_error)))
            else:
                named.append((f"{type(step).__name__.lower()}_{i}", step))
        return Pipeline(named)

    @cached_property
    def model_flavor(self) -> str:
        """The flavor given, else the one the model's path shows."""
        return self.flavor or detect_flavor(self.model_path)

    @property
    def concurrent_calls(self) -> bool:
        """Whether one loaded model takes calls from several threads at once (CONCURRENT_FLAVORS):
        batch and stream then run it single-threaded, one call per core, rather than one call over
        every core, which costs more and whose sums differ in the last bits from split to split."""
        return self.model_flavor in CONCURRENT_FLAVORS

    @property
    def model_only(self) -> bool:
        return self.steps == (MODEL,)

    @cached_property
    def digest(self) -> str:
        return model_digest(self.model_path)

    @cached_property
    def key(self) -> str:
        """The model's digest and every option: equal keys build equal pipelines."""
        text = json.dumps({**self.describe(), "trust": self.trust, "device": self.device}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "model_digest": self.digest,
            "flavor": self.flavor,
            "features": list(self.features) if self.features else None,
            "on_error": self.on_error,
            "steps": [MODEL if s == MODEL else _step_id(s) for s in self.steps],
            **({"signature": self.signature} if self.signature is not None else {}),
        }


def _step_id(step: Any) -> str:
    """A step by what it is and every value it holds (repr elides long arrays and private state)."""
    try:
        state = hashlib.sha256(pickle.dumps(step)).hexdigest()[:16]
    except Exception:  # a step that cannot pickle cannot reach a worker process either
        state = "unpicklable"
    return f"{step!r}#{state}"
