"""`lakeinfer batch --engine spark` against the usual hand-written ways of scoring on Spark.

On Spark local[2], with the data and the ONNX models of bench/batch_local.py (2M rows x 20
float32 in two Parquet files; a RandomForest of 100 trees, depth 12, and an MLP (256, 256)), each
variant is one fresh process that starts a SparkSession, reads the Parquet input, computes the
label and the class probabilities of every row and writes `id, prediction, probability` as
Parquet. The time is the process's wall time, start-up included, the same way for every variant;
each variant runs `--repeat` times, the rounds interleaved, and its best round counts:

  lakeinfer       `python -m lakeinfer batch --engine spark --master local[2]` (the real CLI)
  (1) series      a Series pandas UDF that loads the model for every batch
  (2) iterator    an Iterator pandas UDF that loads it once per partition
  (3) broadcast   a Series pandas UDF over a broadcast of the model's bytes (a session per batch)
  (4) pbu         pyspark.ml.functions.predict_batch_udf (the model once per Python worker)
  (5) mapInArrow  a hand-written mapInArrow that loads the model once per partition

With ``--connect`` the same job runs against a Spark Connect server (started once here, from
pyspark's own jars, on local[2] with the same settings) through a client process per round:

  lakeinfer       `python -m lakeinfer batch --engine spark --remote sc://...` (the real CLI)
  (5) mapInArrow  the same hand-written mapInArrow over a Spark Connect session

The hand-written variants are written as a performance-aware user writes them: onnxruntime at one
intra-op (and one inter-op) thread, one per task slot (local[2] runs two tasks at once on two
cores; onnxruntime's default, a thread per core in each of the two Python workers, puts four busy
threads on two cores), Spark's Arrow batch size tuned once (`--arrow-batch`, 65,536 rows; 16,384
gave mapInArrow the same rate within 1% on this machine), and the
mapInArrow variant building its Arrow columns without a Python list per row. lakeinfer keeps its
own defaults. Every variant gets the same Spark settings (local[2], 4g driver memory) and the
same model file, and writes the same columns. It prints rows/s and the ratio of lakeinfer to the
best of (1)-(5) for each model. The command starts its JVM from the class archive an earlier Spark
command on this machine wrote (README, "Spark performance"); on a machine without one, its first
round writes it and runs about 4 s longer, so take the best of two rounds there.

    python bench/batch_spark.py [--rows 2000000] [--repeat 2] [--variants lakeinfer,mapInArrow] [--dir DIR]
                                [--arrow-batch 65536]
    python bench/batch_spark.py --connect [--rows 2000000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_local import FEATURES, make_input, train_models  # noqa: E402

MASTER = "local[2]"
CONF = {"spark.driver.memory": "4g"}
HAND_WRITTEN = ["series", "iterator", "broadcast", "pbu", "mapInArrow"]
REMOTE = "LAKEINFER_BENCH_REMOTE"  # the Spark Connect server of a --connect run, for every variant's process
ARROW_BATCH = "LAKEINFER_BENCH_ARROW_BATCH"  # the hand-written variants' Arrow batch size (rows)
SCALAR, SCALAR_ITER = 200, 204  # PythonEvalType: pandas UDFs over several columns (varargs need it named)


def hand_written(variant: str, model: str, data: str, out: str) -> None:
    """One hand-written variant, start to finish, in this process."""
    import onnxruntime as ort
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StructField, StructType

    remote = os.environ.get(REMOTE)
    if remote:  # a Spark Connect session: the server has its own settings
        spark = SparkSession.builder.remote(remote).getOrCreate()
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", os.environ[ARROW_BATCH])
    else:
        builder = SparkSession.builder.master(MASTER).appName(f"bench-{variant}")
        for key, value in {**CONF, "spark.sql.execution.arrow.maxRecordsPerBatch": os.environ[ARROW_BATCH]}.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(data)
    out_type = StructType([StructField("prediction", LongType()), StructField("probability", ArrayType(DoubleType()))])
    features = [F.col(f) for f in FEATURES]

    def load(source: str | bytes) -> ort.InferenceSession:
        options = ort.SessionOptions()  # one thread per task slot: local[2] runs two tasks on two cores
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def predict(session: ort.InferenceSession, x: np.ndarray) -> pd.DataFrame:
        labels, proba = session.run(None, {session.get_inputs()[0].name: x})
        return pd.DataFrame({"prediction": labels.astype(np.int64), "probability": list(proba.astype(np.float64))})

    def matrix(columns: tuple[pd.Series, ...]) -> np.ndarray:
        return np.column_stack([c.to_numpy(np.float32) for c in columns])

    if variant == "series":
        @pandas_udf(out_type, SCALAR)  # type: ignore[call-overload]
        def series(*columns):  # type: ignore[no-untyped-def]
            return predict(load(model), matrix(columns))

        result = df.select("id", series(*features).alias("out")).select("id", "out.*")
    elif variant == "iterator":
        @pandas_udf(out_type, SCALAR_ITER)  # type: ignore[call-overload]
        def iterator(batches):  # type: ignore[no-untyped-def]
            session = load(model)
            for columns in batches:
                yield predict(session, matrix(columns))

        result = df.select("id", iterator(*features).alias("out")).select("id", "out.*")
    elif variant == "broadcast":
        shipped = spark.sparkContext.broadcast(Path(model).read_bytes())

        @pandas_udf(out_type, SCALAR)  # type: ignore[call-overload]
        def broadcast(*columns):  # type: ignore[no-untyped-def]
            return predict(load(shipped.value), matrix(columns))

        result = df.select("id", broadcast(*features).alias("out")).select("id", "out.*")
    elif variant == "pbu":
        from pyspark.ml.functions import predict_batch_udf

        def make_predict_fn():  # type: ignore[no-untyped-def]
            session = load(model)

            def fn(x: np.ndarray) -> dict[str, np.ndarray]:
                labels, proba = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
                return {"prediction": labels.astype(np.int64), "probability": proba.astype(np.float64)}

            return fn

        # the documented way for a multi-feature model: one array column, a tensor shape per row
        udf = predict_batch_udf(make_predict_fn, return_type=out_type, batch_size=int(os.environ[ARROW_BATCH]),
                                input_tensor_shapes=[[len(FEATURES)]])
        result = df.select("id", udf(F.array(*features)).alias("out")).select("id", "out.*")
    elif variant == "mapInArrow":
        import pyarrow as pa
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = pa.schema([("id", pa.int64()), ("prediction", pa.int64()), ("probability", pa.list_(pa.float64()))])

        def by_partition(batches):  # type: ignore[no-untyped-def]
            session = load(model)
            name = session.get_inputs()[0].name
            for batch in batches:
                x = np.column_stack([batch.column(f).to_numpy() for f in FEATURES])
                labels, proba = session.run(None, {name: x})
                n, k = proba.shape
                offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
                yield pa.RecordBatch.from_arrays(
                    [batch.column("id"), pa.array(labels.astype(np.int64)),
                     pa.ListArray.from_arrays(offsets, pa.array(proba.astype(np.float64).ravel()))], schema=schema)

        result = df.mapInArrow(by_partition, from_arrow_schema(schema))
    else:
        raise SystemExit(f"unknown variant {variant}")
    result.write.mode("overwrite").parquet(out)
    if not remote:
        spark.stop()


def command(variant: str, model: Path, data: Path, out: Path) -> list[str]:
    if variant == "lakeinfer":
        conf = [a for key, value in CONF.items() for a in ("--spark-conf", f"{key}={value}")]
        remote = os.environ.get(REMOTE)
        where = ["--remote", remote] if remote else ["--master", MASTER, *conf]
        return [sys.executable, "-m", "lakeinfer", "batch", "--engine", "spark", *where,
                "--model", str(model), "--input", str(data), "--output", str(out), "--keep", "id", "--overwrite",
                "--quiet"]
    return [sys.executable, __file__, "--run", variant, str(model), str(data), str(out)]


def run(variant: str, model: Path, data: Path, out: Path, rows: int) -> float:
    """rows/s of one variant: a fresh process, Spark's start-up included."""
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    # every variant's Python workers run this interpreter, where onnxruntime is installed
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    subprocess.run(command(variant, model, data, out), check=True, stderr=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - start
    table = pq.read_table(out, columns=["id", "prediction", "probability"])
    assert table.num_rows == rows, (variant, table.num_rows)
    return rows / elapsed


def start_connect_server(work: Path) -> subprocess.Popen[bytes]:
    """A Spark Connect server on a free port of 127.0.0.1; its address goes to every variant."""
    import socket

    from pyspark.find_spark_home import _find_spark_home

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = [a for key, value in {**CONF, "spark.ui.enabled": "false",
                                 "spark.connect.grpc.binding.port": str(port)}.items() for a in ("--conf", f"{key}={value}")]
    log = open(work / "connect-server.log", "wb")  # noqa: SIM115 (the server's whole life)
    proc = subprocess.Popen([os.path.join(_find_spark_home(), "bin", "spark-submit"), "--class",
                             "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", MASTER, *conf],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    deadline = time.monotonic() + 180
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Spark Connect server did not start: see {work / 'connect-server.log'}") from None
            time.sleep(0.2)
    os.environ[REMOTE] = f"sc://127.0.0.1:{port}"
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--variants", default=",".join(["lakeinfer", *HAND_WRITTEN]))
    parser.add_argument("--models", default="random_forest,mlp")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each variant's best round counts")
    parser.add_argument("--arrow-batch", type=int, default=65_536,
                        help="spark.sql.execution.arrow.maxRecordsPerBatch for the hand-written variants")
    parser.add_argument("--dir", help="work folder, kept between runs (default: a temporary one)")
    parser.add_argument("--connect", action="store_true",
                        help="run lakeinfer and mapInArrow against a Spark Connect server started here")
    parser.add_argument("--run", nargs=4, metavar=("VARIANT", "MODEL", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        hand_written(*args.run)
        return
    os.environ[ARROW_BATCH] = str(args.arrow_batch)
    work = Path(args.dir or tempfile.mkdtemp(prefix="lakeinfer-spark-bench-"))
    data = work / f"input-{args.rows}"
    if not data.exists():
        make_input(data, args.rows)
    models = {name: work / f"{name}.onnx" for name in args.models.split(",")}
    if not all(p.exists() for p in models.values()):
        models = {k: v for k, v in train_models(work).items() if k in models}
    variants = args.variants.split(",")
    server = None
    if args.connect:
        variants = [v for v in variants if v in ("lakeinfer", "mapInArrow")]
        server = start_connect_server(work)
        print(f"Spark Connect server on {MASTER}, {args.rows:,} rows, Parquet in and out, a fresh client "
              f"process per variant (its start-up included, the server's not); {os.cpu_count()} cores")
    else:
        print(f"Spark {MASTER}, {args.rows:,} rows, Parquet in and out, a fresh process per variant "
              f"(start-up included); {os.cpu_count()} cores")
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        print(f"\n{name}:\n  {'variant':<12}{'rows/s (best)':>14}  each run")
        runs: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeat):  # rounds interleave the variants, so a busy spell hits them all
            for variant in variants:
                runs[variant].append(run(variant, model, data, work / f"out-{name}-{variant}", args.rows))
        rates = results[name] = {v: max(r) for v, r in runs.items()}
        for variant in variants:
            each = " ".join(f"{r:,.0f}" for r in runs[variant])
            print(f"  {variant:<12}{rates[variant]:>14,.0f}  {each}", flush=True)
        others = [v for v in variants if v != "lakeinfer"]
        if "lakeinfer" in rates and others:
            best = max(others, key=rates.__getitem__)
            print(f"  lakeinfer / best hand-written ({best}): {rates['lakeinfer'] / rates[best]:.2f}x", flush=True)
    print(json.dumps(results))
    if server is not None:
        server.terminate()
        server.wait(timeout=60)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
