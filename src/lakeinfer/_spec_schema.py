"""The schema of job specs and pipeline step options, as pydantic models.

Every model forbids unknown keys, so a misspelt option is an error naming its path instead of a
silently used default. Scalars are strict: a string where a number or a bool belongs is refused
rather than coerced, since ``"false"`` read as true would hide the mistake (an int is still
taken where a float belongs).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, get_args

import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from ._spec_errors import config_error, show

__all__ = [
    "BatchSection", "ModelSection", "OnError", "STEP_OPS", "ServeSection", "SpecModel", "Step",
    "StreamSection", "config_error", "dump", "merged", "validate_step",
]

OnError = Literal["fail", "skip", "null"]


def _engine(name: str) -> str:
    from .engines import ENGINES

    if name not in ENGINES:
        names = [repr(n) for n in ENGINES]
        known = " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
        raise PydanticCustomError("engine", "expected {known}, got {got}", {"known": known, "got": show(name)})
    return name


Engine = Annotated[StrictStr, AfterValidator(_engine)]
StreamEngine = Literal["local", "spark"]


def _scalar(value: Any) -> Any:
    # a plain validator, not a union of strict types: one error per bad value, not one per member
    if isinstance(value, bool | int | float | str | datetime.date | datetime.time):
        return value
    raise PydanticCustomError("scalar_type", "expected a number, string or bool, got {got}",
                              {"got": show(value)})


def _spark_value(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    raise PydanticCustomError("scalar_type", "expected a string, number or bool, got {got}",
                              {"got": show(value)})


def _labels(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {_scalar(k): _scalar(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_scalar(v) for v in value]
    raise PydanticCustomError("labels_type", "expected a list or a table of labels, got {got}",
                              {"got": show(value)})


Scalar = Annotated[Any, AfterValidator(_scalar)]
SparkValue = Annotated[Any, AfterValidator(_spark_value)]
Count = Annotated[StrictInt, Field(ge=1)]
Port = Annotated[StrictInt, Field(ge=0, le=65535)]
Millis = Annotated[StrictFloat, Field(ge=0)]
Positive = Annotated[StrictFloat, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- pipeline steps --------------------------------------------------------------------------

class SelectStep(_Strict):
    op: Literal["select"]
    columns: list[StrictStr]


class RenameStep(_Strict):
    op: Literal["rename"]
    columns: dict[StrictStr, StrictStr]


def _arrow_type(name: str) -> str:
    try:
        pa.type_for_alias(name)
    except ValueError:
        raise PydanticCustomError("arrow_type", "unknown Arrow type '{name}'",
                                  {"name": name}) from None
    return name


class CastStep(_Strict):
    op: Literal["cast"]
    columns: dict[StrictStr, Annotated[StrictStr, AfterValidator(_arrow_type)]]


class FillNullStep(_Strict):
    op: Literal["fill_null"]
    values: dict[StrictStr, Scalar]


# A step's optional keys default to None here: the defaults are the transformer's own (its
# constructor in lakeinfer.pipeline), so they are declared once.

class AssembleStep(_Strict):
    op: Literal["assemble"]
    columns: list[StrictStr]
    output: StrictStr | None = None


class ThresholdStep(_Strict):
    op: Literal["threshold"]
    threshold: StrictFloat | None = None
    column: StrictStr | None = None
    index: StrictInt | None = None
    output: StrictStr | None = None


class ArgmaxStep(_Strict):
    op: Literal["argmax"]
    column: StrictStr | None = None
    output: StrictStr | None = None


class LabelMapStep(_Strict):
    op: Literal["label_map"]
    # Any plus a validator, not a union of list and dict: one error per bad value, not per member
    labels: Annotated[Any, AfterValidator(_labels)]
    column: StrictStr | None = None
    output: StrictStr | None = None


class ModelStepSpec(_Strict):
    op: Literal["model"]


_STEP_MODELS: tuple[type[_Strict], ...] = (
    SelectStep, RenameStep, CastStep, FillNullStep, AssembleStep, ThresholdStep, ArgmaxStep,
    LabelMapStep, ModelStepSpec,
)
STEP_OPS: tuple[str, ...] = tuple(
    get_args(m.model_fields["op"].annotation)[0] for m in _STEP_MODELS
)
STEP_BY_OP = dict(zip(STEP_OPS, _STEP_MODELS, strict=True))

Step = Annotated[
    SelectStep | RenameStep | CastStep | FillNullStep | AssembleStep | ThresholdStep | ArgmaxStep
    | LabelMapStep | ModelStepSpec,
    Field(discriminator="op"),
]
_STEP_ADAPTER: TypeAdapter[Any] = TypeAdapter(Step)


# --- job spec sections -----------------------------------------------------------------------

class ModelSection(_Strict):
    path: StrictStr | None = None
    flavor: StrictStr | None = None
    trust: StrictBool | None = None
    features: list[StrictStr] | None = None
    device: StrictStr | None = None
    signature: StrictStr | None = None


class PipelineSection(_Strict):
    steps: list[Step] = []


class BatchSection(_Strict):
    input: StrictStr | None = None
    output: StrictStr | None = None
    input_format: Literal["parquet", "csv", "jsonl"] | None = None
    keep: list[StrictStr] | None = None
    workers: Count | None = None
    batch_size: Count | None = None
    on_error: OnError | None = None
    overwrite: StrictBool | None = None
    engine: Engine | None = None
    ray_address: StrictStr | None = None
    master: StrictStr | None = None
    remote: StrictStr | None = None
    model_path_on_cluster: StrictStr | None = None
    spark_io: Literal["auto", "arrow", "spark"] | None = None
    spark_conf: dict[StrictStr, SparkValue] | None = None
    partition_by: list[StrictStr] | None = None
    catalog: StrictStr | None = None
    where: StrictStr | None = None
    snapshot: StrictInt | StrictStr | None = None
    incremental: StrictBool | None = None
    full: StrictBool | None = None
    staging: StrictStr | None = None


class ServeModel(_Strict):
    """One of several served models: ``[[serve.models]]``, its name, its [model] keys, its own
    pipeline steps and, optionally, its own batcher settings (else the [serve] ones)."""
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
    path: StrictStr
    flavor: StrictStr | None = None
    trust: StrictBool | None = None
    features: list[StrictStr] | None = None
    device: StrictStr | None = None
    signature: StrictStr | None = None
    steps: list[Step] = []
    max_batch_size: Count | None = None
    max_wait_ms: Millis | None = None
    max_queue: Count | None = None


def _unique_names(models: list[ServeModel] | None) -> list[ServeModel] | None:
    names = [m.name for m in models or ()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PydanticCustomError("unique_names", "two models are named '{name}'; each needs a name of its own",
                                  {"name": twice[0]})
    if models is not None and not models:
        raise PydanticCustomError("empty_models", "lists no model", {})
    return models


class ServeSection(_Strict):
    models: Annotated[list[ServeModel] | None, AfterValidator(_unique_names)] = None
    name: StrictStr | None = None
    host: StrictStr | None = None
    port: Port | None = None
    grpc_port: Port | None = None
    workers: Count | None = None
    max_batch_size: Count | None = None
    max_wait_ms: Millis | None = None
    max_queue: Count | None = None
    timeout_ms: Positive | None = None
    max_body_bytes: Count | None = None
    api_key_env: StrictStr | None = None
    access_log: StrictBool | None = None
    engine: Literal["local", "ray"] | None = None
    replicas: Count | None = None
    min_replicas: Count | None = None
    max_replicas: Count | None = None
    ray_address: StrictStr | None = None
    ledger: StrictStr | None = None
    ledger_interval: Positive | None = None
    ledger_wal: StrictStr | None = None
    ledger_fsync: StrictBool | None = None
    catalog: StrictStr | None = None


class StreamSection(_Strict):
    bootstrap_servers: StrictStr | None = None
    input_topic: StrictStr | None = None
    output_topic: StrictStr | None = None
    group_id: StrictStr | None = None
    dead_letter_topic: StrictStr | None = None
    exactly_once: StrictBool | None = None
    transactional_id: StrictStr | None = None
    keep: list[StrictStr] | None = None
    max_batch_size: Count | None = None
    max_wait_ms: Millis | None = None
    commit_interval_ms: Millis | None = None
    metrics_interval_s: Positive | None = None
    metrics_port: Port | None = None
    max_poll_interval_ms: Count | None = None
    engine: StreamEngine | None = None
    master: StrictStr | None = None
    remote: StrictStr | None = None
    checkpoint: StrictStr | None = None
    trigger: StrictStr | None = None
    ledger: StrictStr | None = None
    ledger_interval: Positive | None = None
    ledger_wal: StrictStr | None = None
    ledger_fsync: StrictBool | None = None
    catalog: StrictStr | None = None


def _table(value: Any) -> Any:
    # an empty YAML section (``batch:``) reads as null; it means the same as leaving it out
    return {} if value is None else value


class SpecModel(_Strict):
    model: Annotated[ModelSection, BeforeValidator(_table)] = ModelSection()
    pipeline: Annotated[PipelineSection, BeforeValidator(_table)] = PipelineSection()
    batch: Annotated[BatchSection, BeforeValidator(_table)] = BatchSection()
    serve: Annotated[ServeSection, BeforeValidator(_table)] = ServeSection()
    stream: Annotated[StreamSection, BeforeValidator(_table)] = StreamSection()


SECTIONS: dict[str, type[_Strict]] = {
    "model": ModelSection, "pipeline": PipelineSection, "batch": BatchSection,
    "serve": ServeSection, "stream": StreamSection,
}


# --- errors ----------------------------------------------------------------------------------

def validate_step(spec: Mapping[str, Any], *, index: int | None = None) -> dict[str, Any]:
    """The step's options as given, checked: ``{"op": ..., **options}``."""
    if index is not None:
        where = f"pipeline.steps[{index}]"
    elif isinstance(spec, Mapping) and spec.get("op") in STEP_BY_OP:
        where = f"step {spec['op']!r}"
    else:
        where = "step"
    try:
        step = _STEP_ADAPTER.validate_python(spec)
    except ValidationError as exc:
        raise config_error(exc, where, lone_step=True) from None
    return dump(step)


_Section = TypeVar("_Section", bound=BaseModel)


def merged(section: _Section, given: Mapping[str, Any], name: str) -> _Section:
    """``section`` (a spec's, as read) with the ``given`` values on top (None: not given), checked
    as a whole by the section's own schema: the one merge of spec, command line and API."""
    values = {**dump(section), **{k: v for k, v in given.items() if v is not None}}
    try:
        return type(section).model_validate(values)
    except ValidationError as exc:
        raise config_error(exc, f"{name} options") from None


def dump(model: BaseModel) -> dict[str, Any]:
    # only what the user set: defaults stay out so CLI options and callers can still decide
    return model.model_dump(exclude_unset=True, exclude_none=True)
