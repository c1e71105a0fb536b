"""The Spark engine against the usual hand-written ways of scoring with a model on Spark.

On Spark local[2], with the data and the ONNX models of bench/batch_local.py (2M rows x 20
float32; a RandomForest of 100 trees, depth 12, and an MLP (256, 256)), in one run, each variant
computes the label and the class probabilities of every row into a `noop` sink:

  lakeinfer       lakeinfer.engines.spark.score (mapInArrow, broadcast model, per-worker cache)
  (1) series      a Series-to-Series pandas UDF that loads the model for every batch
  (2) iterator    an Iterator pandas UDF that loads it once per partition
  (3) broadcast   a Series pandas UDF over a broadcast of the model's bytes (a session per batch)
  (4) pbu         pyspark.ml.functions.predict_batch_udf
  (5) mapInArrow  a hand-written mapInArrow that loads the model once per partition

It prints rows/s, model loads and the ratio of lakeinfer to the best of (1)-(5).

    python bench/batch_spark.py [--rows 2000000] [--partitions 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_local import FEATURES, make_input, train_models  # noqa: E402

BATCH = 16_384
SCALAR, SCALAR_ITER = 200, 204  # PythonEvalType: pandas UDFs over several columns (varargs need it named)


def session_for(model_bytes: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_variant(name: str, spark, df, model: Path):  # type: ignore[no-untyped-def]
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StructField, StructType

    context = spark.sparkContext
    loads = context.accumulator(0)
    out_type = StructType([StructField("prediction", LongType()), StructField("probability", ArrayType(DoubleType()))])
    model_bytes = model.read_bytes()
    features = [F.col(f) for f in FEATURES]

    def predict(session, x: np.ndarray) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        labels, proba = session.run(None, {session.get_inputs()[0].name: x})
        return pd.DataFrame({"prediction": labels.astype(np.int64), "probability": list(proba.astype(np.float64))})

    def matrix(columns) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.column_stack([c.to_numpy(np.float32) for c in columns])

    if name == "lakeinfer":
        from lakeinfer.engines.spark import ScoreStats, score

        stats: list[ScoreStats] = []
        result = score(df, str(model), keep=["id"], batch_size=BATCH, stats=stats)
        result.write.format("noop").mode("overwrite").save()
        return stats[0].model_loads
    if name == "series":
        @pandas_udf(out_type, SCALAR)  # type: ignore[call-overload]
        def series(*columns):  # type: ignore[no-untyped-def]
            loads.add(1)
            return predict(session_for(model_bytes), matrix(columns))

        result = df.select("id", series(*features).alias("out"))
    elif name == "iterator":
        @pandas_udf(out_type, SCALAR_ITER)  # type: ignore[call-overload]
        def iterator(batches):  # type: ignore[no-untyped-def]
            loads.add(1)
            session = session_for(model_bytes)
            for columns in batches:
                yield predict(session, matrix(columns))

        result = df.select("id", iterator(*features).alias("out"))
    elif name == "broadcast":
        shipped = context.broadcast(model_bytes)

        @pandas_udf(out_type, SCALAR)  # type: ignore[call-overload]
        def broadcast(*columns):  # type: ignore[no-untyped-def]
            loads.add(1)
            return predict(session_for(shipped.value), matrix(columns))

        result = df.select("id", broadcast(*features).alias("out"))
    elif name == "pbu":
        from pyspark.ml.functions import predict_batch_udf

        def make_predict_fn():  # type: ignore[no-untyped-def]
            loads.add(1)
            session = session_for(model_bytes)

            def fn(x: np.ndarray) -> dict[str, np.ndarray]:
                labels, proba = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
                return {"prediction": labels.astype(np.int64), "probability": proba.astype(np.float64)}

            return fn

        # the documented way for a multi-feature model: one array column, a tensor shape per row
        udf = predict_batch_udf(make_predict_fn, return_type=out_type, batch_size=BATCH,
                                input_tensor_shapes=[[len(FEATURES)]])
        result = df.select("id", udf(F.array(*features)).alias("out"))
    else:
        import pyarrow as pa
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = pa.schema([("id", pa.int64()), ("prediction", pa.int64()), ("probability", pa.list_(pa.float64()))])

        def by_partition(batches):  # type: ignore[no-untyped-def]
            loads.add(1)
            session = session_for(model_bytes)
            for batch in batches:
                x = np.column_stack([batch.column(f).to_numpy() for f in FEATURES])
                labels, proba = session.run(None, {session.get_inputs()[0].name: x})
                yield pa.RecordBatch.from_arrays(
                    [batch.column("id"), pa.array(labels.astype(np.int64)),
                     pa.array(list(proba.astype(np.float64)), pa.list_(pa.float64()))], schema=schema)

        result = df.mapInArrow(by_partition, from_arrow_schema(schema))
    result.write.format("noop").mode("overwrite").save()
    return loads.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()
    from lakeinfer.engines._spark_session import session

    work = Path(tempfile.mkdtemp(prefix="lakeinfer-spark-bench-"))
    data = make_input(work / "input", args.rows)
    models = train_models(work)
    spark = session("local[2]", {"spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH),
                                 "spark.driver.memory": "4g"})
    df = spark.read.parquet(str(data)).repartition(args.partitions).cache()
    df.count()
    variants = ["lakeinfer", "series", "iterator", "broadcast", "pbu", "mapInArrow"]
    print(f"Spark local[2], {args.rows:,} rows in {args.partitions} partitions, Arrow batches of {BATCH:,} rows")
    warm = df.limit(50_000)
    for variant in variants:  # start the Python workers and warm every code path once
        run_variant(variant, spark, warm, models["mlp"])
    for name, model in models.items():
        print(f"\n{name}:\n  {'variant':<12}{'rows/s':>12}{'model loads':>13}")
        rates = {}
        for variant in variants:
            start = time.perf_counter()
            loads = run_variant(variant, spark, df, model)
            rates[variant] = args.rows / (time.perf_counter() - start)
            print(f"  {variant:<12}{rates[variant]:>12,.0f}{loads:>13}", flush=True)
        best = max((v for v in variants if v != "lakeinfer"), key=rates.__getitem__)
        print(f"  lakeinfer / best of the others ({best}): {rates['lakeinfer'] / rates[best]:.2f}x")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
