"""Job spec files (TOML or YAML): one file holds the model, the pipeline and the I/O, so that
``batch``, ``serve`` and ``stream`` run the same pipeline.

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

from .errors import ConfigError
from .runtime import PipelineRecipe

__all__ = ["JobSpec", "load_spec"]

_MODEL_KEYS = {"path", "flavor", "trust", "features", "device"}
_SERVE_KEYS = {"name", "host", "port", "workers", "max_batch_size", "max_wait_ms", "max_queue", "timeout_ms",
               "max_body_bytes", "api_key_env"}
_STREAM_KEYS = {"bootstrap_servers", "input_topic", "output_topic", "group_id", "dead_letter_topic", "exactly_once",
                "transactional_id", "keep", "max_batch_size", "max_wait_ms", "metrics_interval_s", "max_poll_interval_ms",
                "metrics_port", "engine", "master",
                "checkpoint", "trigger"}
_BATCH_KEYS = {"input", "output", "input_format", "keep", "workers", "batch_size", "on_error", "overwrite", "engine",
               "master", "spark_conf", "partition_by"}


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
        raise ConfigError(f"job spec {path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"job spec {path} must be a table/mapping at the top level")
    unknown = set(data) - {"model", "pipeline", "batch", "serve", "stream"}
    if unknown:
        raise ConfigError(f"job spec {path}: unknown section(s) {', '.join(sorted(unknown))}")
    base = os.path.dirname(os.path.abspath(path))
    model = dict(data.get("model") or {})
    bad = set(model) - _MODEL_KEYS
    if bad:
        raise ConfigError(f"job spec {path}: unknown [model] key(s) {', '.join(sorted(bad))}")
    if "path" in model:
        model["path"] = _resolve(base, model["path"])
    batch = dict(data.get("batch") or {})
    bad = set(batch) - _BATCH_KEYS
    if bad:
        raise ConfigError(f"job spec {path}: unknown [batch] key(s) {', '.join(sorted(bad))}")
    for key in ("input", "output"):
        if key in batch:
            batch[key] = _resolve(base, batch[key])
    steps = list((data.get("pipeline") or {}).get("steps") or [])
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "op" not in step:
            raise ConfigError(f"job spec {path}: pipeline step {i + 1} needs an 'op'")
    stream = dict(data.get("stream") or {})
    bad = set(stream) - _STREAM_KEYS
    if bad:
        raise ConfigError(f"job spec {path}: unknown [stream] key(s) {', '.join(sorted(bad))}")
    serve = dict(data.get("serve") or {})
    bad = set(serve) - _SERVE_KEYS
    if bad:
        raise ConfigError(f"job spec {path}: unknown [serve] key(s) {', '.join(sorted(bad))}")
    return JobSpec(model=model, steps=steps, batch=batch, serve=serve,
                   stream=stream, source=path)
