"""Pipeline steps over Arrow batches, and a Pipeline as a transformer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lakeinfer import (
    MODEL,
    Argmax,
    Assemble,
    Cast,
    ConfigError,
    FillNull,
    LabelMap,
    Pipeline,
    PipelineRecipe,
    Rename,
    SchemaError,
    Select,
    Threshold,
)
from lakeinfer.pipeline import step_from_dict


def _batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "id": [1, 2, 3],
        "a": [1.0, None, 3.0],
        "b": pa.array([4, 5, 6], pa.int32()),
        "probability": [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]],
    })


def test_select_rename_cast_fill() -> None:
    out = Pipeline([Select(["id", "a", "b"]), Rename({"a": "x"}), Cast({"b": "float64"}), FillNull({"x": -1.0})]).transform(_batch())
    assert out.schema.names == ["id", "x", "b"]
    assert out.column("b").type == pa.float64()
    assert out.column("x").to_pylist() == [1.0, -1.0, 3.0]


def test_steps_name_the_missing_column() -> None:
    with pytest.raises(SchemaError, match="missing feature column 'zz'"):
        Select(["zz"]).transform(_batch())
    with pytest.raises(SchemaError, match="cannot cast column 'id'"):
        Cast({"id": "bool"}).transform(pa.RecordBatch.from_pydict({"id": ["yes", "maybe"]}))
    with pytest.raises(ConfigError, match="unknown type 'floaty'"):
        Cast({"a": "floaty"})


def test_assemble_makes_a_vector_column() -> None:
    out = Assemble(["b", "id"], output="features").transform(_batch())
    assert out.column("features").to_pylist() == [[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]]


def test_threshold_argmax_label_map() -> None:
    batch = _batch()
    assert Threshold(0.5).transform(batch).column("prediction").to_pylist() == [0, 1, 1]
    assert Threshold(0.85, index=0, output="sure").transform(batch).column("sure").to_pylist() == [1, 0, 0]
    indices = Argmax().transform(batch)
    assert indices.column("prediction").to_pylist() == [0, 1, 0]
    labels = LabelMap(["stays", "churns"]).transform(indices)
    assert labels.column("prediction").to_pylist() == ["stays", "churns", "stays"]
    mapped = LabelMap({0: "no", 1: "yes"}, output="answer").transform(indices)
    assert mapped.column("answer").to_pylist() == ["no", "yes", "no"]
    with pytest.raises(SchemaError, match="no label for 2"):
        LabelMap(["a", "b"]).transform(pa.RecordBatch.from_pydict({"prediction": [0, 2]}))


def test_step_specs() -> None:
    step = step_from_dict({"op": "label_map", "labels": ["x", "y"]})
    assert isinstance(step, LabelMap)
    with pytest.raises(ConfigError, match="unknown op 'explode'"):
        step_from_dict({"op": "explode"})
    with pytest.raises(ConfigError, match="step 'rename': missing required key 'columns'"):
        step_from_dict({"op": "rename"})


def test_recipe_places_the_model(onnx_model) -> None:  # type: ignore[no-untyped-def]
    recipe = PipelineRecipe(str(onnx_model.path), features=tuple(f"f{i}" for i in range(5)),
                            steps=({"op": "fill_null", "values": {"f0": 0.0}}, {"op": "model"}, {"op": "argmax"},
                                   {"op": "label_map", "labels": ["low", "mid", "high"]}))
    assert recipe.steps[1] == MODEL
    pipeline = recipe.build()
    rng = np.random.default_rng(0)
    batch = pa.RecordBatch.from_pydict({f"f{i}": rng.normal(size=4) for i in range(5)})
    batch = batch.set_column(0, "f0", pa.array([None, 0.1, 0.2, 0.3], pa.float64()))
    out = pipeline.transform(batch)
    assert set(out.column("prediction").to_pylist()) <= {"low", "mid", "high"}
    assert pipeline.model_step is not None
    with pytest.raises(ConfigError, match="one model step"):
        PipelineRecipe("m.onnx", steps=(MODEL, MODEL))
