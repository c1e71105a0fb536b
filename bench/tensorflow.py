"""A Keras MLP exported as a TensorFlow SavedModel: lakeinfer batch against the loop a user writes.

The model: a Keras Sequential (16 -> 64 relu -> 64 relu -> 3), exported with ``model.export``
(signature ``serving_default``, input ``keras_tensor`` [N, 16] float32, output ``output_0``). The
input is N generated rows of Parquet (files of 250,000 rows): an id and 16 float64 columns.
Measured, process start-up included (TensorFlow's own import is most of both at small N):

  (b) lakeinfer  `python -m lakeinfer batch --model M --trust-model --features f0,...,f15
                 --input I --output O --keep id --quiet` (the local engine's default: one
                 process using every core)
  (p) the loop   a fresh Python process: import TensorFlow, load the SavedModel, read the same
                 Parquet rows in 10,000-row batches, stack the columns, call the signature, write
                 Parquet (one file per input file)

each run --repeat times (best kept, as the machine may be busy); both outputs are compared on
every row (within 1e-6) and the ratio p/b is printed. It never runs in CI and asserts nothing.

    python bench/tensorflow.py                  # 1M rows
    python bench/tensorflow.py --rows 200000    # a quick look
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WIDTH = 16
FEATURES = [f"f{j}" for j in range(WIDTH)]
FILE_ROWS = 250_000

LOOP = textwrap.dedent("""
    import sys, glob, os
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq
    import tensorflow as tf

    model, data, out = sys.argv[1:4]
    features = [f"f{j}" for j in range(16)]
    score = tf.saved_model.load(model).signatures["serving_default"]
    os.makedirs(out)
    for path in sorted(glob.glob(os.path.join(data, "*.parquet"))):
        writer = None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=["id", *features]):
            x = np.column_stack([batch.column(f).to_numpy() for f in features]).astype(np.float32)
            y = score(keras_tensor=tf.constant(x))["output_0"].numpy()
            flat = pa.array(y.astype(np.float64).reshape(-1))
            table = pa.table({"id": batch.column("id"),
                              "output_0": pa.FixedSizeListArray.from_arrays(flat, y.shape[1])})
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(out, os.path.basename(path)), table.schema)
            writer.write_table(table)
        writer.close()
""")


def _model(folder: Path) -> Path:
    # this file is bench/tensorflow.py: the folder Python put first on the path would shadow TensorFlow
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("tensorflow", None)
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(3)])
    path = folder / "model"
    model.export(str(path), verbose=False)
    return path


def _data(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(7)
    data = folder / "input"
    data.mkdir()
    for start in range(0, rows, FILE_ROWS):
        n = min(FILE_ROWS, rows - start)
        columns = {"id": np.arange(start, start + n, dtype=np.int64),
                   **{f: rng.normal(size=n) for f in FEATURES}}
        pq.write_table(pa.table(columns), data / f"part-{start // FILE_ROWS:03d}.parquet", row_group_size=131_072)
    return data


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed: {done.stderr[-2000:]}")
    return seconds


def _outputs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(folder, columns=["id", "output_0"]).sort_by("id")
    values = table.column("output_0").combine_chunks()
    return table.column("id").to_numpy(), np.asarray(values.flatten().to_numpy()).reshape(len(values), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lakeinfer-bench-tf-") as tmp:
        folder = Path(tmp)
        model, data = _model(folder), _data(folder, args.rows)
        script = folder / "loop.py"
        script.write_text(LOOP)
        env_note = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (on)")
        print(f"{args.rows:,} rows, {WIDTH} features, TF_ENABLE_ONEDNN_OPTS {env_note}, "
              f"{len(os.sched_getaffinity(0))} cores")
        best: dict[str, float] = {}
        for i in range(args.repeat):
            runs = {
                "lakeinfer": [sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--trust-model",
                              "--features", ",".join(FEATURES), "--input", str(data),
                              "--output", str(folder / f"out-b{i}"), "--keep", "id", "--quiet"],
                "loop": [sys.executable, str(script), str(model), str(data), str(folder / f"out-p{i}")],
            }
            for name, command in runs.items():
                seconds = _timed(command)
                best[name] = min(best.get(name, seconds), seconds)
                print(f"  run {i + 1} {name:9s} {seconds:6.2f} s")
        ids_b, b = _outputs(folder / "out-b0")
        ids_p, p = _outputs(folder / "out-p0")
        assert np.array_equal(ids_b, ids_p)
        difference = float(np.abs(b - p).max())
        print(f"lakeinfer {best['lakeinfer']:.2f} s, loop {best['loop']:.2f} s (best of {args.repeat}): "
              f"{best['loop'] / best['lakeinfer']:.2f}x; largest difference {difference:.1e}")


if __name__ == "__main__":
    main()
