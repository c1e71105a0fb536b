"""The command line's serve options for several models: ``--model NAME=PATH`` values, and the
models of a spec's ``[[serve.models]]`` or of several ``--model`` with the shared options."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .serve.config import ModelConfig
    from .spec import JobSpec

__all__ = ["named_model", "served_models"]


def named_model(value: str) -> tuple[str | None, str]:
    """``--model NAME=PATH`` as (NAME, PATH); a plain path (one that exists, or no NAME= before it) as (None, PATH)."""
    from .serve.config import MODEL_NAME

    name, sep, path = value.partition("=")
    if not sep or os.path.exists(value) or not MODEL_NAME.fullmatch(name) or not path:
        return None, value
    return name, path


def served_models(job: JobSpec, args: argparse.Namespace, listed: list[dict[str, Any]] | None,
                   given: list[tuple[str | None, str]]) -> list[ModelConfig]:
    """Several models: a spec's [[serve.models]], or each --model NAME=PATH with the shared options
    (--flavor, --features, --trust-model, the spec's [model] keys) where they fit every model."""
    from ._spec_schema import dump
    from .errors import ConfigError, LakeinferError
    from .models import detect_flavor
    from .runtime import PipelineRecipe
    from .serve.config import ModelConfig

    spec_hint = "give each model its own in a job spec's [[serve.models]]"
    if listed is not None:
        if given:
            raise ConfigError(f"--model and the job spec's [[serve.models]] ({job.source}) both name models to "
                              "serve: keep one")
        if dump(job.model) or job.steps:
            raise ConfigError(f"job spec {job.source}: [[serve.models]] names each model with its keys and steps; "
                              "[model] and [pipeline] are for a server of one model")
        for option, value in (("--flavor", args.flavor), ("--features", args.features)):
            if value is not None:
                raise ConfigError(f"{option} with the job spec's [[serve.models]] is ambiguous: "
                                  "set it per model there")
        models = []
        for entry in listed:
            entry = dict(entry)
            features = entry.pop("features", None)
            batching = {k: entry.pop(k) for k in ("max_batch_size", "max_wait_ms", "max_queue") if k in entry}
            name = entry.pop("name")
            recipe = PipelineRecipe(model_path=entry.pop("path"), steps=tuple(entry.pop("steps", ())),
                                    features=tuple(features) if features else None,
                                    trust=bool(entry.pop("trust", False) or args.trust_model),
                                    on_error="fail", **entry)
            models.append(ModelConfig(name, recipe, **batching))
        return models
    unnamed = [path for name, path in given if name is None]
    if unnamed:
        raise ConfigError(f"several models need a name each: --model NAME=PATH (not '{unnamed[0]}')")
    if job.model.path is not None:
        raise ConfigError(f"job spec {job.source}: [model] path and several --model NAME=PATH both name models: "
                          "keep one")
    if job.steps:
        raise ConfigError(f"job spec {job.source}: [pipeline] steps with several --model NAME=PATH are ambiguous: "
                          f"{spec_hint}")
    flavor = args.flavor or job.model.flavor
    features = args.features or job.model.features
    detected: dict[str, str | None] = {}
    for name, path in given:
        try:
            detected[str(name)] = detect_flavor(path)
        except LakeinferError:
            detected[str(name)] = None  # a flavor the option may give; else loading says why
    if flavor is not None:
        other = next((f"{n} is {d}" for n, d in detected.items() if d is not None and d != flavor), None)
        if other:
            raise ConfigError(f"--flavor {flavor} does not fit every model ({other}): {spec_hint}")
    if features is not None:
        kinds = sorted({flavor or d or "unknown" for d in detected.values()})
        if len(kinds) > 1:
            raise ConfigError(f"--features for several models of different flavors ({', '.join(kinds)}) is "
                              f"ambiguous: {spec_hint}")
    trust = bool(args.trust_model or job.model.trust)
    return [ModelConfig(str(name), PipelineRecipe(model_path=path, flavor=flavor, trust=trust,
                                                  features=tuple(features) if features else None,
                                                  device=job.model.device, on_error="fail",
                                                  signature=args.signature or job.model.signature))
            for name, path in given]
