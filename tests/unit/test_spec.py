"""Job specs are validated strictly: unknown keys and wrong types name their path in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lakeinfer
from lakeinfer import MODEL, ConfigError, LabelMap, Threshold
from lakeinfer._spec_schema import dump
from lakeinfer.pipeline import step_from_dict
from lakeinfer.spec import load_spec
from tests.conftest import run_cli

FULL_TOML = """
[model]
path = "models/churn.onnx"
flavor = "onnx"
trust = false
features = ["f0", "f1"]
device = "cpu"

[[pipeline.steps]]
op = "select"
columns = ["id", "a", "b"]

[[pipeline.steps]]
op = "rename"
columns = { a = "f0", b = "f1" }

[[pipeline.steps]]
op = "cast"
columns = { f1 = "float64" }

[[pipeline.steps]]
op = "fill_null"
values = { f0 = 0 }

[[pipeline.steps]]
op = "model"

[[pipeline.steps]]
op = "threshold"
threshold = 1
index = 0
output = "flag"

[[pipeline.steps]]
op = "label_map"
labels = ["stays", "churns"]
column = "flag"

[batch]
input = "data"
output = "s3://bucket/out"
input_format = "parquet"
keep = ["id"]
workers = 2
batch_size = 1024
on_error = "skip"
overwrite = true
engine = "local"
spark_conf = { "spark.executor.cores" = 2, "spark.app.name" = "x" }
partition_by = ["day"]

[serve]
name = "churn"
host = "0.0.0.0"
port = 8081
workers = 2
max_batch_size = 64
max_wait_ms = 1
max_queue = 10
timeout_ms = 500.5
max_body_bytes = 1024
api_key_env = "KEY"

[stream]
bootstrap_servers = "localhost:9092"
input_topic = "in"
output_topic = "out"
group_id = "g"
dead_letter_topic = "dlq"
exactly_once = true
transactional_id = "t"
keep = ["id"]
max_batch_size = 100
max_wait_ms = 5
metrics_interval_s = 2.5
metrics_port = 9100
max_poll_interval_ms = 60000
engine = "spark"
master = "local[2]"
checkpoint = "/tmp/ckpt"
trigger = "5 seconds"
"""


def _spec(tmp_path: Path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(tmp_path: Path, text: str, name: str = "job.toml") -> str:
    path = _spec(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"job spec {path}: ")
    return message[len(f"job spec {path}: "):]


def test_full_spec_loads_and_builds_a_recipe(tmp_path: Path) -> None:
    job = load_spec(_spec(tmp_path, FULL_TOML))
    assert dump(job.model) == {"path": str(tmp_path / "models" / "churn.onnx"), "flavor": "onnx", "trust": False,
                         "features": ["f0", "f1"], "device": "cpu"}
    assert [s["op"] for s in job.steps] == ["select", "rename", "cast", "fill_null", "model", "threshold",
                                             "label_map"]
    # only the options given, with ints taken where floats belong
    assert job.steps[5] == {"op": "threshold", "threshold": 1.0, "index": 0, "output": "flag"}
    assert isinstance(job.steps[5]["threshold"], float)
    assert job.batch.input == str(tmp_path / "data")
    assert job.batch.output == "s3://bucket/out"
    assert job.batch.spark_conf == {"spark.executor.cores": 2, "spark.app.name": "x"}
    assert job.serve.max_wait_ms == 1.0 and job.serve.port == 8081
    assert job.stream.metrics_port == 9100 and job.stream.exactly_once is True
    recipe = job.recipe()
    assert recipe.on_error == "skip"
    assert recipe.features == ("f0", "f1")
    assert recipe.steps[4] == MODEL
    threshold, label_map = recipe.steps[5], recipe.steps[6]
    assert isinstance(threshold, Threshold)
    assert (threshold.threshold, threshold.index, threshold.output) == (1.0, 0, "flag")
    assert isinstance(label_map, LabelMap) and label_map.column == "flag"


def test_unset_keys_stay_absent(tmp_path: Path) -> None:
    # absent, not filled with defaults, so that CLI options and the runtime's defaults still apply
    job = load_spec(_spec(tmp_path, "[model]\npath = 'm.onnx'\n[batch]\nworkers = 3\n[serve]\n"))
    assert dump(job.model) == {"path": str(tmp_path / "m.onnx")}
    assert dump(job.batch) == {"workers": 3}
    assert dump(job.serve) == {} and dump(job.stream) == {} and job.steps == []


def test_yaml_spec(tmp_path: Path) -> None:
    text = """
model: {path: m.onnx, features: [a, b]}
pipeline:
  steps:
    - {op: fill_null, values: {a: 0.0}}
    - {op: argmax}
    - {op: label_map, labels: {0: low, 1: high}}
batch:
stream: {bootstrap_servers: "k:9092", max_wait_ms: 5, metrics_port: 9000}
"""
    job = load_spec(_spec(tmp_path, text, "job.yaml"))
    assert job.steps[2] == {"op": "label_map", "labels": {0: "low", 1: "high"}}
    assert dump(job.batch) == {}
    assert dump(job.stream) == {"bootstrap_servers": "k:9092", "max_wait_ms": 5.0, "metrics_port": 9000}
    assert job.recipe().steps[-1] == MODEL


@pytest.mark.parametrize(("text", "expected"), [
    ("colour = 1\n", "unknown section 'colour'"),
    ("[modle]\npath = 'm'\n", "unknown section 'modle' (did you mean 'model'?)"),
    ("[model]\npath = 'm'\ncolour = 'blue'\n", "model: unknown key 'colour'"),
    ("[pipeline]\nstep = [{op = 'argmax'}]\n", "pipeline: unknown key 'step' (did you mean 'steps'?)"),
    ("[[pipeline.steps]]\nop = 'argmax'\n[[pipeline.steps]]\nop = 'threshold'\nvalue = 0.9\n",
     "pipeline.steps[1]: unknown key 'value'"),
    ("[[pipeline.steps]]\nop = 'model'\npath = 'm'\n", "pipeline.steps[0]: unknown key 'path' (model takes no options)"),
    ("[batch]\ninput = 'x'\nworker = 2\n", "batch: unknown key 'worker' (did you mean 'workers'?)"),
    ("[serve]\nport = 8080\nthreads = 4\n", "serve: unknown key 'threads'"),
    ("[stream]\ntopic = 'in'\n", "stream: unknown key 'topic'"),
])
def test_unknown_keys_name_their_path(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("[batch]\nworkers = 'two'\n", "batch.workers: expected an integer, got 'two'"),
    ("[batch]\nworkers = 0\n", "batch.workers: must be at least 1, got 0"),
    ("[batch]\nbatch_size = 10.5\n", "batch.batch_size: expected an integer, got 10.5"),
    ("[batch]\noverwrite = 'false'\n", "batch.overwrite: expected true or false, got 'false'"),
    ("[batch]\nkeep = 'id'\n", "batch.keep: expected a list, got 'id'"),
    ("[batch]\non_error = 'ignore'\n", "batch.on_error: expected 'fail', 'skip' or 'null', got 'ignore'"),
    ("[batch]\nengine = 'dask'\n", "batch.engine: expected 'local', 'spark' or 'ray', got 'dask'"),
    ("[model]\ntrust = 'yes'\n", "model.trust: expected true or false, got 'yes'"),
    ("[model]\nfeatures = ['a', 1]\n", "model.features[1]: expected a string, got 1"),
    ("model = 'm.onnx'\n", "model: expected a table/mapping, got 'm.onnx'"),
    ("[serve]\nport = 70000\n", "serve.port: must be at most 65535, got 70000"),
    ("[serve]\nmax_wait_ms = '2'\n", "serve.max_wait_ms: expected a number, got '2'"),
    ("[stream]\nexactly_once = 1\n", "stream.exactly_once: expected true or false, got 1"),
    ("[stream]\nmetrics_port = '9000'\n", "stream.metrics_port: expected an integer, got '9000'"),
    ("[[pipeline.steps]]\nop = 'threshold'\nthreshold = '0.9'\n",
     "pipeline.steps[0].threshold: expected a number, got '0.9'"),
    ("[[pipeline.steps]]\nop = 'threshold'\nthreshold = true\n",
     "pipeline.steps[0].threshold: expected a number, got True"),
    ("[[pipeline.steps]]\nop = 'cast'\ncolumns = { a = 'floaty' }\n",
     "pipeline.steps[0].columns.a: unknown Arrow type 'floaty'"),
    ("[[pipeline.steps]]\nop = 'label_map'\nlabels = 'ab'\n",
     "pipeline.steps[0].labels: expected a list or a table of labels, got 'ab'"),
    ("[[pipeline.steps]]\nop = 'rename'\n", "pipeline.steps[0]: missing required key 'columns'"),
    ("[[pipeline.steps]]\nop = 'thresh'\n",
     "pipeline.steps[0]: unknown op 'thresh' (choose one of select, rename, cast, fill_null, assemble, "
     "threshold, argmax, label_map, model)"),
    ("[[pipeline.steps]]\ncolumns = ['a']\n", "pipeline.steps[0]: a step needs an 'op'"),
])
def test_wrong_types_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_several_errors_on_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "[model]\ncolour = 1\n[batch]\nworkers = 'two'\n")
    assert message == ("model: unknown key 'colour' (known: path, flavor, trust, features, device, signature); "
                       "batch.workers: expected an integer, got 'two'")


def test_yaml_errors_name_the_path(tmp_path: Path) -> None:
    text = "pipeline:\n  steps:\n    - {op: threshold, value: 0.9}\nserve: {port: '80'}\n"
    message = _error(tmp_path, text, "job.yaml")
    assert message.startswith("pipeline.steps[0]: unknown key 'value'")
    assert "serve.port: expected an integer, got '80'" in message


def test_unparsable_spec_is_one_line(tmp_path: Path) -> None:
    path = _spec(tmp_path, "model: [a\nbatch: 1\n", "job.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_step_from_dict_refuses_unknown_options() -> None:
    assert isinstance(step_from_dict({"op": "threshold", "threshold": 0.9}), Threshold)
    with pytest.raises(ConfigError, match=r"^step 'threshold': unknown key 'value'"):
        step_from_dict({"op": "threshold", "value": 0.9})
    with pytest.raises(ConfigError, match=r"^pipeline\.steps\[2\]: unknown key 'value'"):
        step_from_dict({"op": "threshold", "value": 0.9}, index=2)
    with pytest.raises(ConfigError, match=r"^step 'argmax': column: expected a string, got 3"):
        step_from_dict({"op": "argmax", "column": 3})
    with pytest.raises(ConfigError, match=r"^step: unknown op 'thresh'"):
        step_from_dict({"op": "thresh"})


def test_api_steps_are_validated_with_their_index(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^pipeline\.steps\[1\]: unknown key 'value'"):
        lakeinfer.batch(str(tmp_path), str(tmp_path / "out"), model="m.onnx",
                        steps=[{"op": "model"}, {"op": "threshold", "value": 0.9}])
    with pytest.raises(ConfigError, match=r"^pipeline\.steps\[0\]: unknown key 'x'"):
        lakeinfer.PipelineRecipe("m.onnx", steps=({"op": "model", "x": 1},))


def test_cli_bad_step_option_is_one_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "[model]\npath = 'm.onnx'\n\n[[pipeline.steps]]\nop = 'model'\n\n"
                           "[[pipeline.steps]]\nop = 'threshold'\nvalue = 0.9\n\n"
                           "[batch]\ninput = 'in'\noutput = 'out'\n")
    result = run_cli("batch", "--spec", spec)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pipeline.steps[1]" in lines[0] and "'value'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out")
