"""The runtime's parts on their own: the missing-value rule, bad-record isolation, the error wire
format, read-ahead and write-behind, the adaptive batcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from lakeinfer import errors
from lakeinfer.io.overlap import WriteBehind, ordered_map, prefetch
from lakeinfer.runtime import ModelRuntime, PipelineRecipe
from lakeinfer.runtime.batcher import AdaptiveBatcher
from lakeinfer.schema import invalid_rows

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, estimator in (("lr", LogisticRegression()), ("hgb", HistGradientBoostingClassifier(max_iter=20))):
        estimator.fit(x, y)
        joblib.dump(estimator, folder / f"{name}.joblib")
        out[name] = (folder / f"{name}.joblib", estimator)
    return out


def _runtime(path: Path, **options: object) -> ModelRuntime:
    recipe = PipelineRecipe(model_path=str(path), trust=True, features=("a", "b", "c"), **options)  # type: ignore[arg-type]
    return ModelRuntime(recipe)


def _batch(a: list[float | None], b: list[float | None] | None = None) -> pa.RecordBatch:
    b = b if b is not None else [0.5] * len(a)
    return pa.RecordBatch.from_pydict({"a": pa.array(a, pa.float64()), "b": pa.array(b, pa.float64()),
                                       "c": pa.array([1] * len(a), pa.int64())})


def test_invalid_rows_names_the_first_bad_column_of_each_row() -> None:
    batch = _batch([1.0, None, NAN, INF, -INF, 2.0], [1.0, 1.0, None, 1.0, 1.0, NAN])
    bad = invalid_rows(batch, ["a", "b", "c"], missing_ok=False)
    assert bad is not None
    assert bad.mask.tolist() == [False, True, True, True, True, True]
    assert bad.reasons() == [None, "feature column 'a' is null", "feature column 'a' is NaN",
                             "feature column 'a' is Infinity", "feature column 'a' is -Infinity",
                             "feature column 'b' is NaN"]
    lenient = invalid_rows(batch, ["a", "b", "c"], missing_ok=True)
    assert lenient is not None and lenient.reasons() == [None, None, None, "feature column 'a' is Infinity",
                                                         "feature column 'a' is -Infinity", None]
    assert invalid_rows(_batch([1.0, 2.0]), ["a", "b", "c"], missing_ok=False) is None


def test_invalid_rows_looks_inside_vectors() -> None:
    vectors = pa.array([[1.0, 2.0], [1.0, NAN], None, [INF, 0.0]], pa.list_(pa.float64()))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, None]), 2)
    batch = pa.RecordBatch.from_pydict({"v": vectors, "w": pa.concat_arrays([fixed, fixed])})
    bad = invalid_rows(batch, ["v"], missing_ok=False)
    assert bad is not None and bad.reasons() == [None, "feature column 'v' is NaN", "feature column 'v' is null",
                                                 "feature column 'v' is Infinity"]
    bad = invalid_rows(batch, ["w"], missing_ok=False)
    assert bad is not None and bad.mask.tolist() == [False, True, False, True]


def test_transform_follows_on_error(models: dict[str, tuple[Path, object]]) -> None:
    path, estimator = models["lr"]
    batch = _batch([0.1, NAN, 0.3, 0.4])
    with pytest.raises(errors.BadRecordError) as caught:
        _runtime(path).transform(batch)
    assert (caught.value.row, caught.value.column, caught.value.reason) == (1, "a", "feature column 'a' is NaN")
    skipped = _runtime(path, on_error="skip").transform(batch)
    x = np.array([[0.1, 0.5, 1], [0.3, 0.5, 1], [0.4, 0.5, 1]])
    assert skipped.column("prediction").to_pylist() == estimator.predict(x).tolist()  # type: ignore[attr-defined]
    nulls = _runtime(path, on_error="null").transform(batch)
    assert nulls.column("prediction").to_pylist()[1] is None and nulls.num_rows == 4


def test_score_isolates_bad_rows(models: dict[str, tuple[Path, object]]) -> None:
    path, estimator = models["lr"]
    runtime = _runtime(path)
    scored = runtime.score(_batch([0.1, None, 0.3, INF]))
    assert scored.errors == [None, "feature column 'a' is null", None, "feature column 'a' is Infinity"]
    assert scored.outputs.schema.names == ["prediction", "probability"]
    expected = estimator.predict_proba(np.array([[0.1, 0.5, 1], [0.3, 0.5, 1]]))  # type: ignore[attr-defined]
    got = scored.outputs.column("probability").to_pylist()
    assert got[1] is None and got[3] is None
    np.testing.assert_allclose([got[0], got[2]], expected, rtol=0, atol=1e-12)
    with pytest.raises(errors.BadRecordError, match=r"^row 1: feature column 'a' is null \(and 1 more bad rows\)$"):
        scored.raise_bad()
    assert scored.slice(2, 1).errors is None and scored.slice(3, 1).errors == ["feature column 'a' is Infinity"]
    assert runtime.score(_batch([0.1])).errors is None


def test_a_model_that_takes_missing_values_gets_nan(models: dict[str, tuple[Path, object]]) -> None:
    path, estimator = models["hgb"]
    runtime = _runtime(path)
    assert runtime.model.handles_missing
    out = runtime.transform(_batch([None, NAN, 0.2]))
    x = np.array([[NAN, 0.5, 1], [NAN, 0.5, 1], [0.2, 0.5, 1]])
    np.testing.assert_allclose(out.column("probability").to_pylist(),
                               estimator.predict_proba(x), rtol=0, atol=1e-12)  # type: ignore[attr-defined]
    with pytest.raises(errors.BadRecordError, match="is Infinity"):
        runtime.transform(_batch([INF]))


def test_output_schema_and_inputs(models: dict[str, tuple[Path, object]]) -> None:
    runtime = _runtime(models["lr"][0])
    assert runtime.input_schema().names == ["a", "b", "c"]
    assert runtime.describe_outputs().names == ["prediction", "probability"]
    schema = runtime.output_schema(_batch([0.1]).append_column("id", pa.array([7])), keep=["id"])
    assert schema.names == ["id", "prediction", "probability"]
    with pytest.raises(errors.SchemaError, match="--keep column 'nope'"):
        runtime.output_schema(_batch([0.1]), keep=["nope"])
    assert runtime.read_columns(["id"]) == ("a", "b", "c", "id")


def test_wire_format_round_trips_inside_other_text() -> None:
    bad = errors.BadRecordError("input file x, row 3: feature column 'f{0}' is NaN", column="f{0}", row=3,
                                reason="feature column 'f{0}' is NaN")
    text = f"py4j error\nTraceback ...\nRuntimeError: {errors.wire_text(bad)}\n\tat org.apache.spark ..."
    found = errors.find_wire(text)
    assert isinstance(found, errors.BadRecordError)
    assert (str(found), found.column, found.row, found.reason) == (str(bad), "f{0}", 3, bad.reason)
    for exc in (errors.SchemaError("missing column 'a'"), errors.ModelLoadError("gone")):
        back = errors.from_wire(errors.to_wire(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    other = errors.from_wire(errors.to_wire(ValueError("boom")))
    assert type(other) is errors.LakeinferError and str(other) == "ValueError: boom"
    assert errors.from_wire({"class": "os", "message": "m"}).__class__ is errors.LakeinferError
    assert errors.find_wire("no marker here") is None


def test_prefetch_stops_when_its_consumer_does() -> None:
    # the producer has read everything and waits to hand over its end mark on a full queue when
    # the consumer fails: once, that put blocked for ever and so did the consumer's join
    exhausted = threading.Event()

    def items() -> Iterator[int]:
        yield from range(2)
        exhausted.set()

    def consume() -> None:
        for _ in prefetch(items(), depth=1):
            assert exhausted.wait(10)
            raise errors.BadRecordError("bad", column="a", row=0)

    done = threading.Event()

    def run() -> None:
        with pytest.raises(errors.BadRecordError):
            consume()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(10), "prefetch hung after its consumer stopped"


def test_prefetch_hands_the_producers_error_to_the_consumer() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise errors.InputError("file x is truncated")

    got = []
    with pytest.raises(errors.InputError, match="truncated"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1]


def test_ordered_map_runs_side_by_side_and_yields_in_order() -> None:
    second_done = threading.Event()  # the first call waits for the second: both run at once
    started: list[int] = []

    def slow_first(item: int) -> int:
        started.append(item)
        if item == 0:
            assert second_done.wait(10), "the second call did not run beside the first"
        if item == 1:
            second_done.set()  # finishes before item 0: its turn still comes after it
        if item == 5:
            raise errors.BadRecordError("bad", column="a", row=3)
        return item * 10

    got = []
    before = set(threading.enumerate())
    with pytest.raises(errors.BadRecordError):
        for value in ordered_map(slow_first, iter(range(100)), 2):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]  # each in its turn, up to the failing item
    assert max(started) <= 7  # a bounded look-ahead: nothing is started far past the failure
    assert set(threading.enumerate()) <= before  # its threads ended with it


def test_write_behind_reports_the_first_write_error() -> None:
    written: list[int] = []

    def write(item: int) -> None:
        if item == 2:
            raise OSError("disk full")
        written.append(item)

    behind = WriteBehind(write, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            behind.put(i)
        behind.close()
    assert written == [0, 1]


def test_the_batcher_loop_survives_a_failing_batch() -> None:
    calls = {"n": 0}

    def on_batch(requests: int, rows: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metrics backend down")

    def predict(batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({"y": pa.compute.multiply(batch.column(0), 2)})

    async def main() -> list[object]:
        batcher = AdaptiveBatcher(predict, on_batch=on_batch)
        batcher.start()
        first = await asyncio.gather(batcher.submit(pa.RecordBatch.from_pydict({"x": [1]})), return_exceptions=True)
        second = await asyncio.wait_for(batcher.submit(pa.RecordBatch.from_pydict({"x": [5]})), 5)
        await batcher.drain()
        return [*first, second]

    first, second = asyncio.run(main())
    # the first caller got its rows before the failure, and the loop lived on for the second
    assert isinstance(first, pa.RecordBatch) and first.column(0).to_pylist() == [2]
    assert isinstance(second, pa.RecordBatch) and second.column(0).to_pylist() == [10]


def test_the_batcher_isolates_a_bad_caller() -> None:
    # one schema for every caller, so they are merged; the merged call fails on one caller's row
    def predict(batch: pa.RecordBatch) -> pa.RecordBatch:
        if pa.compute.any(pa.compute.less(batch.column(0), 0)).as_py():
            raise errors.SchemaError("negative x")
        return pa.RecordBatch.from_pydict({"y": batch.column(0)})

    sizes: list[int] = []

    async def main() -> list[object]:
        batcher = AdaptiveBatcher(predict, max_wait_ms=50, on_batch=lambda requests, rows: sizes.append(requests))
        batcher.start()
        batches = [pa.RecordBatch.from_pydict({"x": [i]}) for i in (0, -1, 2)]
        results = await asyncio.gather(*(batcher.submit(b) for b in batches), return_exceptions=True)
        await batcher.drain()
        return list(results)

    good0, bad, good2 = asyncio.run(main())
    assert sizes == [3]  # one merged call, then its callers one by one
    assert isinstance(bad, errors.SchemaError)
    assert good0.column(0).to_pylist() == [0] and good2.column(0).to_pylist() == [2]  # type: ignore[union-attr]


def test_callers_wait_in_line_for_room_in_a_full_queue() -> None:
    started, gate = threading.Semaphore(0), threading.Semaphore(0)

    def predict(batch: pa.RecordBatch) -> pa.RecordBatch:
        started.release()
        gate.acquire()  # the model is busy until the test lets one call end
        return batch

    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        batcher = AdaptiveBatcher(predict, max_batch_size=1, max_wait_ms=0, max_queue=1)
        batcher.start()
        row = pa.RecordBatch.from_pydict({"x": [1]})
        running = asyncio.ensure_future(batcher.submit(row))
        await loop.run_in_executor(None, started.acquire)  # the first request is in the model
        queued = asyncio.ensure_future(batcher.submit(row))  # the queue is now full
        first = asyncio.ensure_future(batcher.room(30))
        await asyncio.sleep(0)
        assert batcher.waiting == 1 and not first.done()
        refused = await batcher.room(0.05)  # behind the first in line, and no room comes in time
        later = asyncio.ensure_future(batcher.room(30))
        await asyncio.sleep(0)
        gate.release()  # the first call ends; the queued request goes in: room for one
        await running
        let_in = await first
        assert not later.done() and batcher.waiting == 1  # the caller behind still waits its turn
        admitted = asyncio.ensure_future(batcher.submit(row))
        for _ in range(3):
            gate.release()
        await asyncio.gather(queued, admitted)
        last = await later
        await batcher.drain()
        return {"refused": refused, "let_in": let_in, "last": last}

    assert asyncio.run(main()) == {"refused": False, "let_in": True, "last": True}


def test_score_with_steps_after_the_model(models: dict[str, tuple[Path, object]]) -> None:
    # a step after the model that drops columns, and an input column named like an internal one
    path, estimator = models["lr"]
    runtime = _runtime(path, steps=("model", {"op": "select", "columns": ["prediction"]}))
    batch = _batch([0.1, NAN, 0.3]).append_column("__lakeinfer_error", pa.array(["x", "y", "z"]))
    scored = runtime.score(batch)
    assert scored.outputs.schema.names == ["prediction"]
    assert scored.errors == [None, "feature column 'a' is NaN", None]
    x = np.array([[0.1, 0.5, 1], [0.3, 0.5, 1]])
    expected = estimator.predict(x).tolist()  # type: ignore[attr-defined]
    assert scored.outputs.column("prediction").to_pylist() == [expected[0], None, expected[1]]


def test_records_are_typed_by_the_features(models: dict[str, tuple[Path, object]]) -> None:
    runtime = _runtime(models["hgb"][0])
    # a feature null (or absent) in every record is a column of the model's type, not Arrow's null type
    batch = runtime.records([{"a": None, "b": 1, "id": 7}, {"b": 2.5}], keep=["id"])
    assert batch.schema.names == ["a", "b", "c", "id"]
    assert batch.column("a").type == pa.float64() and batch.column("c").null_count == 2
    assert runtime.score(batch).errors is None  # HistGradientBoosting takes missing values
    with pytest.raises(errors.RecordsError, match=r"records\[1\]: field 'b' is bool; the model needs a number"):
        runtime.records([{"a": 1, "b": 1, "c": 1}, {"a": 1, "b": True, "c": 1}])
    with pytest.raises(errors.RecordsError, match="field 'a'"):
        runtime.records([{"a": "x", "b": 1, "c": 1}])


def test_values_beyond_float32_are_bad_records_for_float32_models() -> None:
    batch = pa.RecordBatch.from_pydict({"a": [1.0, 1e39, -1e39, 3e38]})
    bad = invalid_rows(batch, ["a"], missing_ok=True, limit=float(np.finfo(np.float32).max))
    assert bad is not None and bad.mask.tolist() == [False, True, True, False]
    assert bad.reason(1) == ("a", "feature column 'a' holds 1e+39, beyond the model's float32 range")
    assert invalid_rows(batch, ["a"], missing_ok=True) is None  # a float64 model takes them


def test_a_null_vector_is_bad_even_where_nan_is_missing() -> None:
    batch = pa.RecordBatch.from_pydict({"v": pa.array([[1.0, NAN], None], pa.list_(pa.float64()))})
    bad = invalid_rows(batch, ["v"], missing_ok=True)
    assert bad is not None and bad.reasons() == [None, "feature column 'v' is null"]


def test_recipe_keys_see_every_value_of_a_step(models: dict[str, tuple[Path, object]]) -> None:
    from lakeinfer.pipeline import LabelMap

    labels = np.array([f"label-{i}" for i in range(2000)])
    other = labels.copy()
    other[1000] = "changed"
    path = str(models["lr"][0])
    one = PipelineRecipe(model_path=path, steps=("model", LabelMap(labels)))
    two = PipelineRecipe(model_path=path, steps=("model", LabelMap(other)))
    assert repr(one.steps[1]) == repr(two.steps[1])  # numpy elides the middle: what a repr key saw
    assert one.key != two.key and one.describe() != two.describe()
    same = PipelineRecipe(model_path=path, steps=("model", LabelMap(labels.copy())))
    assert same.key == one.key


def test_tensor_input_names_the_columns_of_a_model_that_names_none(models) -> None:  # type: ignore[no-untyped-def]
    path, model = models["lr"]
    runtime = ModelRuntime(PipelineRecipe(str(path), trust=True), tensor_input=True)
    assert runtime.tensor_input == ("X", 3)
    assert runtime.input_columns == ("X[0]", "X[1]", "X[2]")
    x = np.array([[0.1, 0.2, 0.3], [1.0, NAN, 2.0]])
    scored = runtime.score(pa.RecordBatch.from_arrays([pa.array(x[:, j]) for j in range(3)], names=list(runtime.input_columns)))
    assert scored.outputs.column("prediction").to_pylist()[0] == model.predict(x[:1])[0]  # type: ignore[attr-defined]
    assert scored.errors == [None, "feature column 'X[1]' is NaN"]
    # without it (batch, stream) such a model still needs --features
    with pytest.raises(errors.ConfigError, match="does not name its input features"):
        _ = ModelRuntime(PipelineRecipe(str(path), trust=True)).input_columns
    # a model that names its features keeps them
    named = ModelRuntime(PipelineRecipe(str(path), trust=True, features=("a", "b", "c")), tensor_input=True)
    assert named.tensor_input is None and named.input_columns == ("a", "b", "c")


def test_tensor_input_of_xgboost_and_lightgbm_without_feature_names(tmp_path: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] > 0).astype(int)
    xgb.XGBClassifier(n_estimators=5).fit(x, y).save_model(tmp_path / "m.json")
    lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, y).booster_.save_model(tmp_path / "m.lgb")
    for name in ("m.json", "m.lgb"):
        runtime = ModelRuntime(PipelineRecipe(str(tmp_path / name)), tensor_input=True)
        assert runtime.tensor_input == ("X", 4), name
        batch = pa.RecordBatch.from_arrays([pa.array(x[:20, j]) for j in range(4)], names=list(runtime.input_columns))
        assert runtime.score(batch).outputs.column("prediction").to_pylist() == y[:20].tolist(), name


def test_a_row_scored_alone_scores_as_among_others(tmp_path: Path) -> None:
    # onnxruntime's one-row product sums in another order than its many-row one (on 99 of these
    # 256 rows a linear model's probabilities differ in the last bits): a lone row goes in twice
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype(np.float32)
    path = tmp_path / "lr.onnx"
    onx = to_onnx(LogisticRegression().fit(x, x[:, 0] > 0), x[:1], options={"zipmap": False})
    path.write_bytes(onx.SerializeToString())
    names = [f"f{i}" for i in range(20)]
    runtime = ModelRuntime(PipelineRecipe(str(path), features=tuple(names)), threads=1)
    batch = pa.RecordBatch.from_arrays([pa.array(x[:, i]) for i in range(20)], names=names)
    together = np.stack(runtime.score(batch).outputs.column("probability").to_numpy(zero_copy_only=False))
    alone = np.concatenate([np.stack(runtime.score(batch.slice(i, 1)).outputs.column("probability")
                                     .to_numpy(zero_copy_only=False)) for i in range(256)])
    np.testing.assert_array_equal(alone, together)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the reason, still there
    name = session.get_inputs()[0].name
    raw_alone = np.concatenate([session.run(None, {name: x[i:i + 1]})[1] for i in range(256)])
    assert (raw_alone != session.run(None, {name: x})[1]).any()


def test_scoring_closes_its_input_when_a_row_is_bad() -> None:
    from lakeinfer.engines.unit_worker import _scored
    from lakeinfer.io.sources import Unit

    closed = threading.Event()

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for i in range(10):
                yield pa.record_batch({"a": [float(i)]})
        finally:
            closed.set()

    class Runtime:
        def transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
            if batch.column(0)[0].as_py() == 3.0:
                raise errors.BadRecordError("bad", column="a", row=0)
            return batch

    for spread in (1, 2):
        closed.clear()
        unit = Unit(index=0, path="in.parquet", row_groups=None, first_row=100, num_rows=10)
        with pytest.raises(errors.BadRecordError, match="in.parquet, row 103") as raised:
            list(_scored(Runtime(), batches(), spread, unit))  # type: ignore[arg-type]
        assert closed.is_set()  # while the error (and its traceback) is still held
        assert raised.value.row == 103
