"""The one typed job object: every spec key has an option and a CLI flag, and one merge of
spec, command line and API decides each value."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from lakeinfer import ConfigError, engines
from lakeinfer._spec_schema import BatchSection, ServeSection, StreamSection
from lakeinfer.cli import build_parser
from lakeinfer.job import DEFAULT_BATCH_SIZE, BatchJob, option_names
from lakeinfer.runtime import PipelineRecipe
from lakeinfer.spec import load_spec


def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {s for a in sub.choices[command]._actions for s in a.option_strings}  # type: ignore[attr-defined]


def test_every_batch_spec_key_is_a_job_option_and_a_cli_flag() -> None:
    flags = _flags("batch")
    for key in BatchSection.model_fields:
        assert key in option_names(), f"[batch] {key} has no field on BatchJob or TableOptions"
        assert f"--{key.replace('_', '-')}" in flags, f"[batch] {key} has no --{key.replace('_', '-')}"


@pytest.mark.parametrize(("command", "section", "renamed"), [
    ("serve", ServeSection, {"models": "--model"}),
    ("stream", StreamSection, {"metrics_interval_s": "--metrics-interval"}),
])
def test_every_serve_and_stream_spec_key_is_a_cli_flag(command: str, section: type, renamed: dict[str, str]) -> None:
    flags = _flags(command)
    for key in section.model_fields:
        assert renamed.get(key, f"--{key.replace('_', '-')}") in flags, f"[{command}] {key} has no flag"


def test_the_engine_choices_are_the_registry() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    batch = sub.choices["batch"]  # type: ignore[attr-defined]
    engine = next(a for a in batch._actions if a.dest == "engine")
    assert tuple(engine.choices) == tuple(engines.ENGINES)


def _spec(tmp_path: Path) -> str:
    path = tmp_path / "job.toml"
    path.write_text("[model]\npath = 'm.onnx'\n[batch]\ninput = 'in'\noutput = 'out'\nworkers = 3\n"
                    "batch_size = 100\nkeep = ['id']\nspark_conf = { 'a' = 1, 'b' = 'x' }\n"
                    "catalog = 'lake'\non_error = 'skip'\n")
    return str(path)


def test_resolve_takes_the_spec_then_the_callers_values(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    job = BatchJob.resolve(spec=spec)
    assert (job.workers, job.batch_size, job.keep, job.tables.catalog) == (3, 100, ("id",), "lake")
    assert job.input == str(tmp_path / "in") and job.recipe.model_path == str(tmp_path / "m.onnx")
    assert job.recipe.on_error == "skip" and job.engine == "local"
    assert dict(job.spark_conf) == {"a": "1", "b": "x"}
    given = BatchJob.resolve(spec=spec, workers=1, keep=["k"], spark_conf={"b": "y"}, on_error="null",
                             batch_size=None)
    assert (given.workers, given.keep, given.batch_size) == (1, ("k",), 100)
    assert dict(given.spark_conf) == {"a": "1", "b": "y"}  # settings add up, the caller's win
    assert given.recipe.on_error == "null"


def test_defaults_are_declared_once() -> None:
    job = BatchJob.resolve(model="m.onnx", input="in", output="out")
    assert job.batch_size == DEFAULT_BATCH_SIZE and job.workers is None and not job.overwrite
    assert job.tables.catalog == "default" and job.recipe.on_error == "fail"


def test_the_job_is_frozen() -> None:
    job = BatchJob(recipe=PipelineRecipe("m.onnx"), input="in", output="out")
    with pytest.raises(FrozenInstanceError):
        job.workers = 2  # type: ignore[misc]


@pytest.mark.parametrize(("given", "message"), [
    ({"workers": 0}, "batch options: workers: must be at least 1, got 0"),
    ({"batch_size": -5}, "batch options: batch_size: must be at least 1, got -5"),
    ({"engine": "dask"}, "batch options: engine: expected 'local'"),
    ({"on_error": "drop"}, "batch options: on_error: expected 'fail', 'skip' or 'null', got 'drop'"),
    ({"input": None}, "batch needs an input and an output"),
])
def test_bad_values_are_refused_once_naming_the_option(given: dict[str, object], message: str) -> None:
    options = {"model": "m.onnx", "input": "in", "output": "out", **given}
    with pytest.raises(ConfigError) as caught:
        BatchJob.resolve(**options)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message), str(caught.value)
