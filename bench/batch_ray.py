"""Batch scoring on Ray against Ray Data, side by side in one run.

The same ONNX RandomForest (100 trees, depth 12, 20 float32 features) and the same Parquet rows,
each run in a fresh process and timed from its start until its last output file is written
(start-up included, as a user sees it):

  (a) lakeinfer ray    `lakeinfer batch --engine ray` (a private local Ray, started and stopped)
  (b) Ray Data         a script a performance-aware Ray user writes: `ray.init()`, then
                       `read_parquet -> map_batches(actor class, concurrency=cores, num_cpus=0.5,
                       batch_format="pyarrow") -> write_parquet` (half a CPU per actor: actors
                       holding every CPU starve the read tasks and hang), onnxruntime at one intra-op
                       thread per actor, writing the same columns (id, prediction, probability)
  (c) lakeinfer local  `lakeinfer batch` on the embedded engine, for what Ray costs when it adds nothing

and prints a/b (target >= 1.5) and a/c (target >= 0.8), best of ``--repeat`` interleaved rounds.

    python bench/batch_ray.py                 # 2M rows
    python bench/batch_ray.py --rows 500000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(20)]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

RAY_DATA = r'''
import sys, time
import numpy as np, onnxruntime as ort, pyarrow as pa, ray

model, source, target, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
features = [f"f{i}" for i in range(20)]


class Scorer:
    def __init__(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one core per actor: concurrency=cores actors
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = np.column_stack([batch.column(f).to_numpy() for f in features]).astype(np.float32)
        label, proba = self.session.run(None, {self.input: x})
        probability = pa.FixedSizeListArray.from_arrays(pa.array(proba.ravel().astype(np.float64)), proba.shape[1])
        return pa.table({"id": batch.column("id"), "prediction": label.astype(np.int64),
                         "probability": probability})


ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
ds = ray.data.read_parquet(source)
# half a CPU per actor: actors holding every CPU starve Ray Data's read and write tasks (ray#44687)
ds = ds.map_batches(Scorer, concurrency=cores, num_cpus=0.5, batch_size=16384, batch_format="pyarrow")
ds.write_parquet(target)
ray.shutdown()
'''


def make_input(folder: Path, rows: int, file_rows: int = 250_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for start in range(0, rows, file_rows):
        n = min(file_rows, rows - start)
        cols = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        cols.update({f: rng.normal(size=n).astype(np.float32) for f in FEATURES})
        pq.write_table(pa.table(cols), folder / f"part-{start // file_rows:04d}.parquet", row_group_size=131_072)


def train(path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=-1, random_state=0).fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())


def timed(command: list[str], output: Path, env: dict[str, str] | None = None) -> float:
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed: {done.stderr[-2000:]}")
    return seconds


def check(output: Path, rows: int) -> None:
    table = pq.read_table(output, columns=["id"])
    if table.num_rows != rows or len(np.unique(table.column("id").to_numpy())) != rows:
        raise SystemExit(f"{output}: {table.num_rows} rows, not every row once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        source, model = root / "in", root / "rf.onnx"
        make_input(source, args.rows)
        train(model)
        lakeinfer = [sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--features",
                     ",".join(FEATURES), "--input", str(source), "--keep", "id", "--quiet", "--overwrite"]
        runs = {
            "lakeinfer ray": lambda out: timed([*lakeinfer, "--engine", "ray", "--output", str(out)], out,
                                               {"RAY_ADDRESS": ""}),
            "Ray Data": lambda out: timed([sys.executable, "-c", RAY_DATA, str(model), str(source), str(out),
                                           str(CORES)], out, {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}),
            "lakeinfer local": lambda out: timed([*lakeinfer, "--output", str(out)], out),
        }
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, run in runs.items():
                out = root / name.replace(" ", "-")
                seconds = run(out)
                check(out, args.rows)
                best[name] = min(best.get(name, seconds), seconds)
        print(f"{args.rows:,} rows, {CORES} cores, best of {args.repeat}, start-up included")
        for name, seconds in best.items():
            print(f"  {name:16s} {seconds:7.2f} s  {args.rows / seconds:12,.0f} rows/s")
        print(f"lakeinfer ray / Ray Data:        {best['Ray Data'] / best['lakeinfer ray']:.2f}x (target >= 1.5)")
        print(f"lakeinfer ray / lakeinfer local: {best['lakeinfer local'] / best['lakeinfer ray']:.2f}x (target >= 0.8)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
