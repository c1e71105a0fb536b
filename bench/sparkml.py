"""A Spark ML PipelineModel scored without a JVM against Spark's own transform, side by side.

The model: StringIndexer (plan, region) + OneHotEncoder + VectorAssembler (the one-hot vectors
and six float64 columns) + StandardScaler + RandomForestClassifier (50 trees, maxDepth 5), fitted
with pyspark on 100,000 generated rows and saved with ``PipelineModel.save``. The input is N
generated rows of Parquet (files of 500,000 rows). Measured, process start-up included:

  (b) lakeinfer  `python -m lakeinfer batch --model M --input I --output O --keep id --quiet`: the
                 local engine reading the saved folder itself (no JVM), Parquet -> Parquet parts
  (s) Spark      `python -m lakeinfer batch --engine spark --master local[2] ...`: Spark's own
                 PipelineModel.load(M).transform over the same files, written by Spark as Parquet

each run --repeat times (best kept, as the machine may be busy); both outputs are compared on
every row (same predictions, probabilities within 1e-9) and the ratio s/b is printed. Then the
model is served (`lakeinfer serve`, one worker) and --requests one-row records requests are sent
one after another: p50 and p99 latency, against Spark's transform of a one-row DataFrame in a
warm session, the anchor for one-row scoring on Spark.
It never runs in CI and asserts nothing.

    python bench/sparkml.py                  # 2M rows
    python bench/sparkml.py --rows 200000    # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMBERS = ["amount", "tenure", "usage", "age", "score", "visits"]
PLANS = ["free", "basic", "plus", "pro", "enterprise"]
REGIONS = ["us-east", "us-west", "ca", "br", "uk", "de", "fr", "in", "jp", "au"]
FILE_ROWS = 500_000


def _table(rng: np.random.Generator, n: int, start: int) -> pa.Table:
    cols = {"id": np.arange(start, start + n, dtype=np.int64),
            "plan": rng.choice(PLANS, n, p=[0.4, 0.25, 0.15, 0.15, 0.05]),
            "region": rng.choice(REGIONS, n)}
    for j, name in enumerate(NUMBERS):
        cols[name] = rng.normal(j, 1.0 + j, n)
    signal = cols["amount"] + 0.3 * cols["tenure"] - 0.2 * cols["usage"] + (cols["plan"] == "pro") * 2
    cols["label"] = (signal + rng.normal(0, 1, n) > np.median(signal)).astype(np.float64)
    return pa.table(cols)


def _data(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(7)
    data = folder / "input"
    data.mkdir()
    for start in range(0, rows, FILE_ROWS):
        table = _table(rng, min(FILE_ROWS, rows - start), start).drop_columns(["label"])
        pq.write_table(table, data / f"part-{start // FILE_ROWS:03d}.parquet", row_group_size=131_072)
    return data


def _train(folder: Path) -> Path:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import RandomForestClassifier
    from pyspark.ml.feature import OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

    from lakeinfer.spark.session import session

    spark = session("local[2]", {"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    train = spark.createDataFrame(_table(np.random.default_rng(1), 100_000, 0).to_pandas())
    model = folder / "model"
    Pipeline(stages=[
        StringIndexer(inputCols=["plan", "region"], outputCols=["plan_i", "region_i"]),
        OneHotEncoder(inputCols=["plan_i", "region_i"], outputCols=["plan_v", "region_v"]),
        VectorAssembler(inputCols=["plan_v", "region_v", *NUMBERS], outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features"),
        RandomForestClassifier(numTrees=50, maxDepth=5, seed=5),
    ]).fit(train).write().save(str(model))
    spark.stop()
    return model


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lakeinfer", "batch", *args, "--quiet"], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lakeinfer batch {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return seconds


def _best(args: list[str], out: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        best = min(best, _run([*args, "--output", str(out)]))
    return best


def _compare(a: Path, b: Path) -> str:
    left = pq.read_table(a, columns=["id", "prediction", "probability"]).sort_by("id")
    right = pq.read_table(b, columns=["id", "prediction", "probability"]).sort_by("id")
    if left.column("id") != right.column("id"):
        return "DIFFERENT ROWS"
    same = np.array_equal(left.column("prediction").to_numpy(), right.column("prediction").to_numpy())
    pa_, pb = (np.stack(t.column("probability").to_numpy(zero_copy_only=False)) for t in (left, right))
    gap = float(np.abs(pa_ - pb).max())
    return f"{left.num_rows} rows, predictions {'equal' if same else 'DIFFERENT'}, probabilities within {gap:.1e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_latency(model: Path, requests: int) -> tuple[float, float]:
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "serve", "--model", str(model), "--name", "m",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    row = {"plan": "pro", "region": "uk", **{n: float(j) for j, n in enumerate(NUMBERS)}}
    try:
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if http.get(f"{url}/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            body = {"instances": [row]}
            for _ in range(200):  # warm-up
                http.post(f"{url}/v1/models/m/predict", json=body).raise_for_status()
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                http.post(f"{url}/v1/models/m/predict", json=body).raise_for_status()
                times.append(time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _spark_one_row(model: Path, requests: int) -> float:
    from pyspark.ml import PipelineModel

    from lakeinfer.spark.session import session

    spark = session("local[2]", {"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    loaded = PipelineModel.load(str(model))
    row = [("pro", "uk", *[float(j) for j in range(len(NUMBERS))])]
    df = spark.createDataFrame(row, ["plan", "region", *NUMBERS])
    times = []
    for i in range(20 + requests):
        start = time.perf_counter()
        loaded.transform(df).select("prediction", "probability").collect()
        if i >= 20:
            times.append(time.perf_counter() - start)
    spark.stop()
    return float(np.percentile(np.array(times) * 1000, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sparkml-bench-") as tmp:
        folder = Path(tmp)
        data = _data(folder, args.rows)
        model = _train(folder)
        common = ["--model", str(model), "--input", str(data), "--keep", "id"]
        ours = _best(common, folder / "ours", args.repeat)
        theirs = _best(["--engine", "spark", "--master", "local[2]", *common], folder / "spark", args.repeat)
        print(f"batch, {args.rows:,} rows, {os.cpu_count()} cores, start-up included, best of {args.repeat}:")
        print(f"  lakeinfer (no JVM)        {ours:7.2f} s  {args.rows / ours:12,.0f} rows/s")
        print(f"  Spark local[2] transform  {theirs:7.2f} s  {args.rows / theirs:12,.0f} rows/s")
        print(f"  ratio Spark/lakeinfer     {theirs / ours:7.2f}x")
        print(f"  check: {_compare(folder / 'ours', folder / 'spark')}")
        p50, p99 = _serve_latency(model, args.requests)
        anchor = _spark_one_row(model, min(args.requests, 200))
        print(f"one-row serving, {args.requests} sequential records requests, one worker:")
        print(f"  lakeinfer serve           p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        print(f"  Spark transform, one row  p50 {anchor:6.2f} ms (warm session, collect())")


if __name__ == "__main__":
    main()
