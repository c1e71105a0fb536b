"""Job spec files (TOML or YAML): one file holds the model, the pipeline and the I/O, so that
``batch``, ``serve`` and ``stream`` run the same pipeline. Every key is checked against the
schema in :mod:`lakeinfer._spec_models`; an unknown key or a wrong type is a :class:`ConfigError`
naming its path (``pipeline.steps[1]: unknown key 'value'``).

.. code-block:: toml

    [model]
    path = "model.onnx"          # relative paths are relative to this file
    features = ["f0", "f1"]      # optional: the model's own names are the default
    trust = false

    [[pipeline.steps]]
    op = "fill_null"
    values = { f0 = 0.0 }

    [[pipeline.steps]]
    op = "model"                 # optional: the model goes last when not placed

    [[pipeline.steps]]
    op = "label_map"
    labels = ["stays", "churns"]

    [batch]
    input = "data/"
    output = "predictions/"
    keep = ["customer_id"]
    on_error = "skip"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ._spec_models import SpecModel, config_error, dump
from .errors import ConfigError
from .runtime import PipelineRecipe

__all__ = ["JobSpec", "load_spec"]


@dataclass
class JobSpec:
    model: dict[str, Any]
    steps: list[dict[str, Any]]
    batch: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def recipe(self, **overrides: Any) -> PipelineRecipe:
        """The pipeline recipe, with CLI or API values (those not None) taking precedence."""
        options = {**self.model, **{k: v for k, v in overrides.items() if v is not None}}
        if "path" not in options:
            raise ConfigError(f"{self.source}: [model] needs a path")
        on_error = options.pop("on_error", None) or self.batch.get("on_error", "fail")
        features = options.pop("features", None)
        return PipelineRecipe(
            model_path=options.pop("path"),
            steps=tuple(self.steps),
            on_error=on_error,
            features=tuple(features) if features else None,
            **options,
        )


def _resolve(base: str, value: str) -> str:
    if value.startswith("iceberg:"):  # a catalog's table, not a path
        return value
    if value.startswith("delta:"):
        return "delta:" + _resolve(base, value[len("delta:"):])
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def load_spec(path: str) -> JobSpec:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) job spec."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read job spec {path}: {exc.strerror}") from exc
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(raw) or {}
        else:
            data = tomllib.loads(raw.decode())
    except Exception as exc:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "TOML"
        # parsers point at the line over several lines; the CLI prints errors on one
        reason = " ".join(str(exc).split())
        raise ConfigError(f"job spec {path} is not valid {kind}: {reason}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"job spec {path} must be a table/mapping at the top level")
    try:
        parsed = SpecModel.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, f"job spec {path}") from None
    base = os.path.dirname(os.path.abspath(path))
    model, batch = dump(parsed.model), dump(parsed.batch)
    if "path" in model:
        model["path"] = _resolve(base, model["path"])
    for key in ("input", "output", "staging"):
        if key in batch:
            batch[key] = _resolve(base, batch[key])
    serve = dump(parsed.serve)
    for served in serve.get("models", ()):
        served["path"] = _resolve(base, served["path"])
    return JobSpec(model=model, steps=[dump(step) for step in parsed.pipeline.steps], batch=batch,
                   serve=serve, stream=dump(parsed.stream), source=path)
