"""Job spec files (TOML or YAML): one file holds the model, the pipeline and the I/O, so that
``batch``, ``serve`` and ``stream`` run the same pipeline. Every key is checked against the
schema in :mod:`lakeinfer._spec_schema`; an unknown key or a wrong type is a :class:`ConfigError`
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

from ._spec_schema import (
    BatchSection,
    ModelSection,
    ServeSection,
    SpecModel,
    StreamSection,
    config_error,
    dump,
)
from .errors import ConfigError
from .runtime import PipelineRecipe

__all__ = ["JobSpec", "load_spec"]


@dataclass(frozen=True)
class JobSpec:
    """A job spec as read and checked: each section as its schema holds it (unset keys: None)."""

    model: ModelSection = ModelSection()
    steps: list[dict[str, Any]] = field(default_factory=list)
    batch: BatchSection = BatchSection()
    serve: ServeSection = ServeSection()
    stream: StreamSection = StreamSection()
    source: str = ""

    def recipe(self, **overrides: Any) -> PipelineRecipe:
        """The pipeline recipe from ``[model]`` and ``[pipeline]``, with CLI or API values (those
        not None) taking precedence; ``on_error`` is the batch option, else ``[batch]``'s."""
        options = {**dump(self.model), **{k: v for k, v in overrides.items() if v is not None}}
        if "path" not in options:
            where = f"{self.source}: [model] needs a path" if self.source else "a model path is needed"
            raise ConfigError(where)
        on_error = options.pop("on_error", None) or self.batch.on_error or "fail"
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
    model, batch, serve = parsed.model, parsed.batch, parsed.serve
    if model.path is not None:
        model = model.model_copy(update={"path": _resolve(base, model.path)})
    batch = batch.model_copy(update={key: _resolve(base, getattr(batch, key))
                                     for key in ("input", "output", "staging") if getattr(batch, key) is not None})
    if serve.models is not None:
        serve = serve.model_copy(update={"models": [m.model_copy(update={"path": _resolve(base, m.path)})
                                                    for m in serve.models]})
    return JobSpec(model=model, steps=[dump(step) for step in parsed.pipeline.steps], batch=batch,
                   serve=serve, stream=parsed.stream, source=path)
