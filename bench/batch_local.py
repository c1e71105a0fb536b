"""Local batch scoring throughput, side by side in one run.

For a RandomForest (100 trees, depth 12) and an MLP (256, 256), both exported to ONNX, over a
generated Parquet input of N rows x 20 float32 features, it measures rows/s of:

  (a) ceiling  onnxruntime over an in-memory numpy array, all cores, no I/O: the best of six batch
               sizes, each either one call at a time over every core or one call per core at once
  (b) lakeinfer `lakeinfer batch` Parquet -> Parquet, the real CLI, start-up included
  (c) pandas   a plain script: read everything with pandas, predict with onnxruntime, write
  (e) Daft     a script a performance-aware Daft user writes, run as (b) is (a fresh process, start-up
               included, timed until its output is written): `read_parquet -> @daft.cls` (the
               onnxruntime session loaded once per instance, one intra-op thread, max_concurrency =
               cores) with a `@daft.method.batch` method `-> write_parquet`, writing the columns (b)
               writes (id, prediction, probability); its labels are checked against (b)'s

  (d) I/O     `lakeinfer batch` as in (b) with a model that does no work (the same input and
               output columns): the core-seconds of reading, checking and writing, start-up included

and prints the ratios b/a, b/c, b/e and b/bound ((b) and (e): the best of ``--repeat`` interleaved
runs), where bound = rows / (rows/a + cpu(d)/cores) is the rate (b) would reach if the model ran
at the ceiling and every other core-second of the job were hidden behind it; then, on a 5x larger input, (b) again for each model, its ratios to (a) and to
the bound, and its peak RSS (all processes): start-up weighs less there.

    python bench/batch_local.py            # 2M rows, RSS check on 10M rows
    python bench/batch_local.py --rows 200000 --rss-rows 1000000   # a quick look
    python bench/batch_local.py --rss-rows 0                       # 2M rows only

(e) needs Daft (`pip install -e .[bench]`); without it its column reads "-".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(20)]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
CEILING_BATCHES = (1024, 2048, 4096, 16_384, 65_536, 262_144)
PROBE_ROWS = 500_000

# (e): one intra-op thread per instance and as many instances as cores; on 2 cores that tied
# with one instance of 2 threads (8.6-9.2 s on 2M rows either way), and beat 2 x 2 threads
# (31 s, oversubscribed) and 1 x 1 (15 s). Daft's own batch size and process choice did no better
# than 16Ki/64Ki rows or forced processes or threads.
DAFT_SCRIPT = r'''
import sys
import daft, numpy as np, onnxruntime as ort, pyarrow as pa
from daft import DataType, Series

model, source, target, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
features = [f"f{i}" for i in range(20)]


@daft.cls(max_concurrency=cores)
class Scorer:
    def __init__(self, path: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one core per instance: max_concurrency=cores instances
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @daft.method.batch(return_dtype=DataType.struct({"prediction": DataType.int64(),
                                                     "probability": DataType.list(DataType.float64())}),
                       unnest=True)
    def score(self, *columns: Series):
        x = np.column_stack([c.to_arrow().to_numpy(zero_copy_only=False) for c in columns]).astype(np.float32)
        label, proba = self.session.run(None, {self.input: x})
        offsets = pa.array(np.arange(0, proba.size + 1, proba.shape[1], dtype=np.int32))
        probability = pa.ListArray.from_arrays(offsets, pa.array(proba.ravel().astype(np.float64)))
        return pa.StructArray.from_arrays([pa.array(label.astype(np.int64)), probability],
                                          ["prediction", "probability"])


df = daft.read_parquet(source)
df = df.select(daft.col("id"), Scorer(model).score(*[daft.col(f) for f in features]))
df.write_parquet(target)
'''


def make_input(folder: Path, rows: int, seed: int = 0, file_rows: int = 1_000_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, file_rows):
        n = min(file_rows, rows - start)
        cols = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        cols.update({f: rng.normal(size=n).astype(np.float32) for f in FEATURES})
        pq.write_table(pa.table(cols), folder / f"part-{start // file_rows:04d}.parquet", row_group_size=131_072)
    return folder


def train_models(folder: Path) -> dict[str, Path]:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(42)
    x = rng.normal(size=(60_000, len(FEATURES))).astype(np.float32)
    y = ((x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3]) > 0).astype(np.int64)
    models = {
        "random_forest": RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=-1, random_state=0),
        "mlp": MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=5, random_state=0),
    }
    paths = {}
    for name, model in models.items():
        model.fit(x, y)
        onx = to_onnx(model, x[:1], options={"zipmap": False})
        entry = onx.metadata_props.add()
        entry.key, entry.value = "feature_names", ",".join(FEATURES)
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(onx.SerializeToString())
    return paths


def io_model(folder: Path) -> Path:
    """An ONNX model with the inputs and outputs of the two above that does no work: the label and
    probabilities of the first two features, as ArgMax and Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Slice", ["X", "start", "end", "axis"], ["pair"]),
         helper.make_node("Softmax", ["pair"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["pair"], ["label"], axis=1, keepdims=0)],
        "io_only",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array([v], np.int64), name) for name, v in (("start", 0), ("end", 2), ("axis", 1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "feature_names", ",".join(FEATURES)
    path = folder / "io_only.onnx"
    onnx.save(model, str(path))
    return path


def bound(rows: int, ceiling_rate: float, io_cpu: float) -> float:
    return rows / (rows / ceiling_rate + io_cpu / CORES)


def ceiling(model: Path, data: Path) -> float:
    """onnxruntime alone on a pre-assembled array, every core, the best layout and batch size.

    Each batch size runs as one call at a time over every core (intra-op threads) and as one
    single-threaded call per core at once; all are probed on the first rows, then the two best
    are timed over every row.
    """
    import onnxruntime as ort

    x = np.column_stack([pq.read_table(data, columns=[f]).column(f).to_numpy() for f in FEATURES])

    def session(threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    layouts = {"one call": (session(CORES), 1), "call per core": (session(1), CORES)}
    name = layouts["one call"][0].get_inputs()[0].name
    pool = ThreadPoolExecutor(CORES)

    def rate(layout: str, size: int, rows: np.ndarray) -> float:
        sess, calls = layouts[layout]
        sess.run(None, {name: rows[:size]})
        start = time.perf_counter()
        if calls == 1:
            for i in range(0, len(rows), size):
                sess.run(None, {name: rows[i:i + size]})
        else:
            list(pool.map(lambda i: sess.run(None, {name: rows[i:i + size]}), range(0, len(rows), size)))
        return len(rows) / (time.perf_counter() - start)

    probe = x[:PROBE_ROWS]
    probed = sorted(((rate(layout, size, probe), layout, size) for layout in layouts for size in CEILING_BATCHES),
                    reverse=True)
    best = max((rate(layout, size, x), layout, size) for _, layout, size in probed[:2])
    print(f"  ceiling on {model.stem}: {best[1]}, batches of {best[2]:,} rows", flush=True)
    pool.shutdown()
    return best[0]


def lakeinfer_cli(model: Path, data: Path, out: Path, rows: int) -> tuple[float, int, float]:
    """rows/s of the real CLI (process start-up included), the peak RSS of its process tree and the
    core-seconds (user and system) of that tree."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--input", str(data),
                             "--output", str(out), "--keep", "id", "--json"], stdout=subprocess.PIPE)
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"lakeinfer batch failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.read())  # type: ignore[union-attr]
    print(f"  lakeinfer on {Path(model).stem}: {summary['workers']} process x {summary['threads']} threads, "
          f"{summary['parts']} parts; job time {summary['seconds']:.2f}s of {elapsed:.2f}s wall", flush=True)
    assert pq.ParquetDataset(out).read(columns=["id"]).num_rows == rows
    return rows / elapsed, peak, cpu


def pandas_script(model: Path, data: Path, out: Path) -> float:
    import onnxruntime as ort
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_parquet(data)
    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    labels, proba = session.run(None, {session.get_inputs()[0].name: frame[FEATURES].to_numpy(np.float32)})
    pd.DataFrame({"id": frame["id"], "prediction": labels, "probability": list(proba.astype(np.float64))}).to_parquet(out)
    return len(frame) / (time.perf_counter() - start)


def daft_script(model: Path, data: Path, out: Path, rows: int) -> float:
    """rows/s of :data:`DAFT_SCRIPT` in a fresh process, start-up included, until its output is written."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "DAFT_ANALYTICS_ENABLED": "0", "DO_NOT_TRACK": "1", "DAFT_PROGRESS_BAR": "0"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DAFT_SCRIPT, str(model), str(data), str(out), str(CORES)],
                          capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the Daft script failed with exit code {done.returncode}: {done.stderr[-2000:]}")
    assert pq.ParquetDataset(out).read(columns=["id"]).num_rows == rows
    return rows / elapsed


def same_labels(ours: Path, theirs: Path, what: str) -> None:
    """Stops the bench unless both outputs hold the same label for every id."""
    a, b = (pq.ParquetDataset(p).read(columns=["id", "prediction"]).sort_by("id") for p in (ours, theirs))
    if not (a.column("id").equals(b.column("id")) and a.column("prediction").equals(b.column("prediction"))):
        raise SystemExit(f"{what}: labels differ from lakeinfer's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rss-rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs of (b) and (e), the best counts")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    has_daft = importlib.util.find_spec("daft") is not None
    work = Path(args.dir or tempfile.mkdtemp(prefix="lakeinfer-bench-"))
    print(f"machine: {CORES} cores; input {args.rows:,} rows x {len(FEATURES)} float32; work folder {work}", flush=True)
    data = make_input(work / "input", args.rows)
    models = train_models(work)
    idle = io_model(work)
    _, _, io_cpu = lakeinfer_cli(idle, data, work / "out-io", args.rows)
    print(f"(d) I/O alone: {io_cpu:.2f} core-seconds for {args.rows:,} rows")
    print(f"{'model':<14}{'(a) ceiling':>14}{'(b) lakeinfer':>15}{'(c) pandas':>13}{'(e) Daft':>11}{'bound':>12}"
          f"{'b/a':>7}{'b/c':>7}{'b/e':>7}{'b/bound':>9}   rows/s")
    ceilings = {}
    for name, model in models.items():
        a = ceilings[name] = ceiling(model, data)
        b = e = 0.0
        for _ in range(max(1, args.repeat)):
            b = max(b, lakeinfer_cli(model, data, work / f"out-{name}", args.rows)[0])
            if has_daft:
                e = max(e, daft_script(model, data, work / f"daft-{name}", args.rows))
        if has_daft:
            same_labels(work / f"out-{name}", work / f"daft-{name}", f"Daft on {name}")
        c = pandas_script(model, data, work / f"pandas-{name}.parquet")
        most = bound(args.rows, a, io_cpu)
        daft_rate, daft_ratio = (f"{e:,.0f}", f"{b / e:.2f}") if has_daft else ("-", "-")
        print(f"{name:<14}{a:>14,.0f}{b:>15,.0f}{c:>13,.0f}{daft_rate:>11}{most:>12,.0f}{b / a:>7.2f}{b / c:>7.2f}"
              f"{daft_ratio:>7}{b / most:>9.2f}", flush=True)
    if args.rss_rows:
        big = make_input(work / "input-big", args.rss_rows, seed=1)
        _, _, io_cpu = lakeinfer_cli(idle, big, work / "out-big", args.rss_rows)
        print(f"(d) I/O alone: {io_cpu:.2f} core-seconds for {args.rss_rows:,} rows")
        for name, model in models.items():
            rate, peak, _ = lakeinfer_cli(model, big, work / "out-big", args.rss_rows)
            most = bound(args.rss_rows, ceilings[name], io_cpu)
            print(f"{name} on {args.rss_rows:,} rows: {rate:,.0f} rows/s, {rate / ceilings[name]:.2f} of (a), "
                  f"{rate / most:.2f} of its bound {most:,.0f}; "
                  f"peak RSS of lakeinfer batch (all processes) {peak / 2**20:,.0f} MiB", flush=True)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
