"""An H2O GBM MOJO scored without a JVM against H2O's own Python path, side by side.

The model: an H2O-3 GBM (50 trees, depth 5, binomial) on six float64 columns and two categorical
ones, trained by H2O itself (the ``h2o`` client starts its JVM) on 50,000 generated rows and saved
with ``download_mojo``. The input is N generated rows of Parquet (files of 500,000 rows).
Measured, process start-up included:

  (b) lakeinfer  `python -m lakeinfer batch --model M.zip --input I --output O --keep id --quiet`:
                 the local engine reading the MOJO itself (no JVM), Parquet -> Parquet parts
  (h) H2O        a fresh Python process doing what H2O offers a Python user for a MOJO: read the
                 Parquet with pandas, ``h2o.mojo_predict_pandas`` (a CSV, then ``java -cp
                 h2o-genmodel.jar hex.genmodel.tools.PredictCsv``), write the result as Parquet

each run --repeat times (best kept, as the machine may be busy); both outputs are compared on
every row (same labels, probabilities within 1e-6) and the ratio h/b is printed. Then the model
is served (`lakeinfer serve`, one worker) and --requests one-row records requests are sent one
after another: p50 and p99 latency. It never runs in CI and asserts nothing.

    DO_NOT_TRACK=1 python bench/h2o.py                  # 1M rows
    DO_NOT_TRACK=1 python bench/h2o.py --rows 200000    # a quick look
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMBERS = ["amount", "tenure", "usage", "age", "score", "visits"]
PLANS = ["free", "basic", "plus", "pro", "enterprise"]
REGIONS = ["us-east", "us-west", "ca", "br", "uk", "de", "fr", "in", "jp", "au"]
FILE_ROWS = 500_000


def _table(rng: np.random.Generator, n: int, start: int) -> pa.Table:
    cols: dict[str, object] = {"id": np.arange(start, start + n, dtype=np.int64),
                               "plan": rng.choice(PLANS, n, p=[0.4, 0.25, 0.15, 0.15, 0.05]),
                               "region": rng.choice(REGIONS, n)}
    for j, name in enumerate(NUMBERS):
        cols[name] = np.round(rng.normal(j, 1.0 + j, n), 6)
    signal = cols["amount"] + 0.3 * cols["tenure"] - 0.2 * cols["usage"] + (cols["plan"] == "pro") * 2  # type: ignore[operator]
    cols["label"] = np.where(signal + rng.normal(0, 1, n) > np.median(signal), "yes", "no")
    return pa.table(cols)


def _data(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(7)
    data = folder / "input"
    data.mkdir()
    for start in range(0, rows, FILE_ROWS):
        table = _table(rng, min(FILE_ROWS, rows - start), start).drop_columns(["label"])
        pq.write_table(table, data / f"part-{start // FILE_ROWS:03d}.parquet", row_group_size=131_072)
    return data


def _train(folder: Path) -> tuple[Path, Path]:
    """The MOJO zip and h2o-genmodel.jar."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # this file is bench/h2o.py: the folder Python put first on the path would shadow the h2o package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("h2o", None)
    h2o: Any = importlib.import_module("h2o")
    gbm: Any = importlib.import_module("h2o.estimators").H2OGradientBoostingEstimator

    h2o.init(port=_free_port(), nthreads=-1, max_mem_size="2G", verbose=False)
    h2o.no_progress()
    try:
        csv = folder / "train.csv"
        _table(np.random.default_rng(1), 50_000, 0).to_pandas().to_csv(csv, index=False)
        train = h2o.upload_file(str(csv), col_types={"plan": "enum", "region": "enum", "label": "enum"})
        model = gbm(ntrees=50, max_depth=5, seed=5)
        model.train(x=["plan", "region", *NUMBERS], y="label", training_frame=train)
        target = folder / "mojo"
        model.download_mojo(str(target), get_genmodel_jar=True)
    finally:
        h2o.cluster().shutdown()
    zips = [p for p in glob.glob(str(target / "*.zip"))]
    return Path(zips[0]), target / "h2o-genmodel.jar"


_H2O_PATH = textwrap.dedent("""
    import os, sys
    import pandas as pd
    import h2o
    frame = pd.read_parquet(sys.argv[1])
    scored = h2o.mojo_predict_pandas(frame.drop(columns=["id"]), mojo_zip_path=sys.argv[2],
                                     genmodel_jar_path=sys.argv[3])
    scored.insert(0, "id", frame["id"].to_numpy())
    os.makedirs(sys.argv[4], exist_ok=True)
    scored.to_parquet(os.path.join(sys.argv[4], "part-0.parquet"), index=False)
""")


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {done.stderr.strip()[-2000:]}")
    return seconds


def _best(make: list[str], out: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        best = min(best, _timed(make))
    return best


def _compare(ours: Path, theirs: Path) -> str:
    left = pq.read_table(ours, columns=["id", "prediction", "probability"]).sort_by("id")
    right = pq.read_table(theirs).sort_by("id")
    if left.column("id") != right.column("id"):
        return "DIFFERENT ROWS"
    same = np.array_equal(np.asarray(left.column("prediction").to_pylist()),
                          np.asarray(right.column("predict").to_pylist()))
    mine = np.stack(left.column("probability").to_numpy(zero_copy_only=False))
    h2o_p = np.column_stack([right.column(c).to_numpy() for c in ("no", "yes")])
    gap = float(np.abs(mine - h2o_p).max())
    return f"{left.num_rows} rows, labels {'equal' if same else 'DIFFERENT'}, probabilities within {gap:.1e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_latency(model: Path, requests: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of one-row requests sent one after another over one kept-alive connection
    by a plain socket client (bench/serve.py's, timed to the microsecond; an HTTP library's own
    time per request would be half the figure): the records endpoint and v2 infer."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve import round_trip_ms, wait_up  # the serving bench's own client and readiness wait

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lakeinfer", "serve", "--model", str(model), "--name", "m",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    row: dict[str, Any] = {"plan": "pro", "region": "uk", **{n: float(j) for j, n in enumerate(NUMBERS)}}
    records = json.dumps({"instances": [row]}).encode()
    v2 = json.dumps({"inputs": [{"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64",
                                 "data": [v]} for k, v in row.items()]}).encode()
    try:
        wait_up(proc, f"{url}/v2/models/m/infer", "lakeinfer", payload=v2)
        httpx.post(f"{url}/v1/models/m/predict", content=records).raise_for_status()
        return {"records (/v1/models/m/predict)": round_trip_ms(f"{url}/v1/models/m/predict", requests, records),
                "v2 infer (/v2/models/m/infer)": round_trip_ms(f"{url}/v2/models/m/infer", requests, v2)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="h2o-bench-") as tmp:
        folder = Path(tmp)
        data = _data(folder, args.rows)
        mojo, jar = _train(folder)
        ours = _best([sys.executable, "-m", "lakeinfer", "batch", "--model", str(mojo), "--input", str(data),
                      "--output", str(folder / "ours"), "--keep", "id", "--quiet"], folder / "ours", args.repeat)
        theirs = _best([sys.executable, "-c", _H2O_PATH, str(data), str(mojo), str(jar), str(folder / "h2o")],
                       folder / "h2o", args.repeat)
        print(f"batch, {args.rows:,} rows, GBM MOJO of 50 trees, {os.cpu_count()} cores, start-up included, "
              f"best of {args.repeat}:")
        print(f"  lakeinfer (no JVM)            {ours:7.2f} s  {args.rows / ours:12,.0f} rows/s")
        print(f"  h2o.mojo_predict_pandas path  {theirs:7.2f} s  {args.rows / theirs:12,.0f} rows/s")
        print(f"  ratio H2O/lakeinfer           {theirs / ours:7.2f}x")
        print(f"  check: {_compare(folder / 'ours', folder / 'h2o')}")
        print(f"one-row serving, {args.requests} requests one after another, one worker, a plain socket client:")
        for route, (p50, p99) in _serve_latency(mojo, args.requests).items():
            print(f"  {route:32s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")


if __name__ == "__main__":
    main()
