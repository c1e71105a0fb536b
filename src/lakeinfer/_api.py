"""The Python API: :func:`batch` and :func:`inspect_model`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .engines.local import DEFAULT_BATCH_SIZE, BatchSummary, run_batch
from .errors import ConfigError
from .models import load_model
from .runtime import PipelineRecipe
from .spec import JobSpec, load_spec


def batch(input: str | None = None, output: str | None = None, *, model: str | PipelineRecipe | None = None,
          flavor: str | None = None, trust: bool | None = None, features: Sequence[str] | None = None,
          steps: Sequence[Any] | None = None, keep: Sequence[str] | None = None,
          workers: int | None = None, batch_size: int | None = None, input_format: str | None = None,
          on_error: str | None = None, overwrite: bool | None = None, device: str | None = None,
          spec: str | JobSpec | None = None, engine: str | None = None, progress: bool = False,
          unit_rows: int | None = None, master: str | None = None, spark_conf: dict[str, str] | None = None,
          partition_by: Sequence[str] | None = None, catalog: str | None = None, where: str | None = None,
          snapshot: str | int | None = None, incremental: bool | None = None, full: bool | None = None,
          staging: str | None = None) -> BatchSummary:
    """Score ``input`` (a file, folder or glob; local or ``s3://``) into Parquet under ``output``.

    ``model`` is a path, or a :class:`PipelineRecipe` holding every model option (then ``flavor``,
    ``trust``, ``features``, ``steps`` and ``on_error`` here are not used).

    Options left as None come from ``spec`` (a TOML/YAML job spec) when given, else defaults:
    ``workers``: worker processes, each loading the model once; by default one per core, or
    one process using every core for flavors with their own thread pool (ONNX, PyTorch,
    XGBoost, LightGBM); ``batch_size`` = 16384 rows per model call,
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
    job = load_spec(spec) if isinstance(spec, str) else spec or JobSpec(model={}, steps=[])
    if steps is not None:
        job.steps = list(steps)
    b = job.batch

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else b.get(key, default)

    engine = pick(engine, "engine", "local")
    if engine not in ("local", "spark"):
        raise ConfigError(f"unknown engine '{engine}'; choose local or spark")
    input_uri, output_uri = pick(input, "input", None), pick(output, "output", None)
    if not input_uri or not output_uri:
        raise ConfigError("batch needs an input and an output (--input/--output or [batch] in the spec)")
    if isinstance(model, PipelineRecipe):  # the recipe is the whole model contract: nothing to merge
        recipe = model
    else:
        recipe = job.recipe(path=model, flavor=flavor, trust=trust, features=features, device=device,
                            on_error=on_error)
    table_options = {"catalog": pick(catalog, "catalog", None), "where": pick(where, "where", None),
                     "snapshot": pick(snapshot, "snapshot", None), "incremental": pick(incremental, "incremental", None),
                     "full": pick(full, "full", None), "staging": pick(staging, "staging", None)}
    if engine == "spark":
        from .engines.spark import run_spark_batch

        return run_spark_batch(  # type: ignore[no-any-return]
            recipe, input_uri, output_uri, keep=tuple(pick(keep, "keep", ())),
            input_format=pick(input_format, "input_format", None),
            batch_size=int(pick(batch_size, "batch_size", DEFAULT_BATCH_SIZE)),
            master=pick(master, "master", None), spark_conf={**b.get("spark_conf", {}), **(spark_conf or {})},
            partition_by=tuple(pick(partition_by, "partition_by", ())),
            overwrite=bool(pick(overwrite, "overwrite", False)), catalog=table_options["catalog"],
            where=table_options["where"],
            snapshot=None if table_options["snapshot"] is None else str(table_options["snapshot"]),
            incremental=bool(table_options["incremental"]), full=bool(table_options["full"]),
            staging=table_options["staging"])
    return run_batch(
        recipe, input_uri, output_uri,
        keep=tuple(pick(keep, "keep", ())),
        workers=pick(workers, "workers", None),
        batch_size=int(pick(batch_size, "batch_size", DEFAULT_BATCH_SIZE)),
        input_format=pick(input_format, "input_format", None),
        overwrite=bool(pick(overwrite, "overwrite", False)),
        unit_rows=unit_rows,
        progress=progress,
        catalog=table_options["catalog"],
        where=table_options["where"],
        snapshot=None if table_options["snapshot"] is None else str(table_options["snapshot"]),
        incremental=bool(table_options["incremental"]),
        full=bool(table_options["full"]),
        staging=table_options["staging"],
    )


def inspect_model(model: str, *, flavor: str | None = None, trust: bool = False,
                  features: Sequence[str] | None = None) -> dict[str, Any]:
    """The model's flavor and signature as a plain dict."""
    loaded = load_model(model, flavor=flavor, trust=trust, features=features)
    info = loaded.describe()
    try:
        info["input_columns"] = list(loaded.input_columns)
    except ConfigError as exc:
        info["input_columns"] = None
        info["note"] = str(exc)
    return info
