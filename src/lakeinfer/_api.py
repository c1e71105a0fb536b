"""The Python API: :func:`batch` and :func:`inspect_model`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from . import engines
from .engines import BatchSummary
from .errors import ConfigError
from .job import BatchJob
from .models import load_model
from .runtime import PipelineRecipe
from .spec import JobSpec, load_spec


def batch(input: str | None = None, output: str | None = None, *, model: str | PipelineRecipe | None = None,
          flavor: str | None = None, trust: bool | None = None, features: Sequence[str] | None = None,
          steps: Sequence[Any] | None = None, keep: Sequence[str] | None = None,
          workers: int | None = None, batch_size: int | None = None, input_format: str | None = None,
          on_error: str | None = None, overwrite: bool | None = None, device: str | None = None,
          spec: str | JobSpec | None = None, engine: str | None = None, progress: bool = False,
          unit_rows: int | None = None, ray_address: str | None = None, master: str | None = None, remote: str | None = None, spark_conf: dict[str, str] | None = None,
          partition_by: Sequence[str] | None = None, catalog: str | None = None, where: str | None = None,
          snapshot: str | int | None = None, incremental: bool | None = None, full: bool | None = None,
          staging: str | None = None, signature: str | None = None,
          model_path_on_cluster: str | None = None, spark_io: str | None = None) -> BatchSummary:
    """Score ``input`` (a file, folder or glob; local or ``s3://``) into Parquet under ``output``.

    ``model`` is a path, or a :class:`PipelineRecipe` holding every model option (then ``flavor``,
    ``trust``, ``features``, ``steps`` and ``on_error`` here are not used).

    Options left as None come from ``spec`` (a TOML/YAML job spec) when given, else defaults:
    ``workers``: worker processes, each loading the model once; by default one per core, or
    one process using every core for flavors with their own thread pool (ONNX, PyTorch,
    XGBoost, LightGBM); ``batch_size``: rows per model call (:data:`lakeinfer.job.DEFAULT_BATCH_SIZE`),
    ``on_error`` = ``"fail"``.

    ``input`` and ``output`` may be tables: ``iceberg:NAMESPACE.TABLE`` (the pyiceberg
    ``catalog``, ``"default"`` by default) or ``delta:PATH`` (a folder holding ``_delta_log`` is
    one too). A table output gets the job's predictions in one commit. ``where`` (a pyiceberg row
    filter) and ``snapshot`` (an Iceberg snapshot id, a Delta version) pick the input rows;
    ``incremental`` scores only what was appended to the input since the last run recorded in the
    output table, ``full`` everything (replacing the output's rows); ``staging``: where the parts
    wait for the commit. A rerun of an interrupted job resumes it: finished parts are
    kept and the rest is scored, so every input row appears in the output exactly once.
    """
    job = load_spec(spec) if isinstance(spec, str) else spec
    if steps is not None:
        job = dataclasses.replace(job or JobSpec(), steps=list(steps))
    options = BatchJob.resolve(
        spec=job, model=model, progress=progress, unit_rows=unit_rows,
        model_options={"flavor": flavor, "trust": trust, "features": features, "device": device,
                       "signature": signature},
        input=input, output=output, keep=None if keep is None else list(keep), workers=workers,
        batch_size=batch_size, input_format=input_format, on_error=on_error, overwrite=overwrite, engine=engine,
        ray_address=ray_address, master=master, remote=remote, spark_conf=spark_conf, partition_by=None if partition_by is None else list(partition_by),
        catalog=catalog, where=where, snapshot=snapshot, incremental=incremental, full=full, staging=staging,
        model_path_on_cluster=model_path_on_cluster, spark_io=spark_io)
    return engines.run(options)


def inspect_model(model: str, *, flavor: str | None = None, trust: bool = False,
                  features: Sequence[str] | None = None, signature: str | None = None) -> dict[str, Any]:
    """The model's flavor and signature as a plain dict."""
    loaded = load_model(model, flavor=flavor, trust=trust, features=features, signature=signature)
    info = loaded.describe()
    try:
        info["input_columns"] = list(loaded.input_columns)
    except ConfigError as exc:
        info["input_columns"] = None
        info["note"] = str(exc)
    return info
