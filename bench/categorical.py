"""Local batch scoring throughput on models that read string / categorical columns, side by side.

The input is N generated rows of Parquet (a few files, row groups of 131,072 rows): ``id`` int64,
three float64 columns and three low-cardinality string columns (plan, region, device), as plain
Arrow strings, or with --dictionary as Arrow dictionary columns. Two models, trained on 100,000
generated rows in a pandas DataFrame, read them:

  sklearn   Pipeline(ColumnTransformer(OneHotEncoder on the strings, StandardScaler on the
            numbers), LogisticRegression), saved with joblib (so lakeinfer needs --trust-model)
  lightgbm  LGBMClassifier (100 trees) fitted with the strings as pandas categories, saved as
            LightGBM's text model

For each model it measures rows/s, process start-up included, of:

  (b) lakeinfer `python -m lakeinfer batch ... --keep id --quiet`, Parquet -> Parquet parts
  (c) pandas    a plain script in a subprocess: pd.read_parquet everything, (strings to category
                for LightGBM), predict_proba, write one Parquet of id, prediction, probability

each run --repeat times (best kept, as the machine may be busy), checks that the two outputs agree
(same predictions, probabilities within 1e-6), and prints both rates and the ratio b/c.
It never runs in CI and asserts nothing.

    python bench/categorical.py                      # 2M rows
    python bench/categorical.py --rows 200000        # a quick look
    python bench/categorical.py --dictionary         # dictionary-encoded string columns
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
import pyarrow as pa
import pyarrow.parquet as pq

CORES = os.cpu_count() or 1
NUMBERS = ["amount", "tenure", "usage"]
STRINGS = {
    "plan": ["free", "basic", "plus", "pro", "enterprise"],
    "region": ["us-east", "us-west", "us-central", "ca", "br", "mx", "uk", "de", "fr", "in", "jp", "au"],
    "device": [f"{os_}-{kind}" for os_ in ("ios", "android", "windows", "macos", "linux", "chromeos")
               for kind in ("phone", "tablet", "desktop", "tv", "web")],
}
FEATURES = [*NUMBERS, *STRINGS]
FILE_ROWS = 500_000
ROW_GROUP = 131_072


def _columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {
        "amount": rng.lognormal(3.0, 1.0, n),
        "tenure": rng.uniform(0, 120, n),
        "usage": rng.normal(size=n),
    }
    for name, values in STRINGS.items():
        weights = rng.dirichlet(np.ones(len(values)))  # skewed, like real category counts
        cols[name] = np.asarray(values, dtype=object)[rng.choice(len(values), size=n, p=weights)]
    return cols


def _labels(rng: np.random.Generator, cols: dict[str, np.ndarray]) -> np.ndarray:
    effect = {name: {v: rng.normal() for v in values} for name, values in STRINGS.items()}
    score = 0.4 * np.log(cols["amount"]) - 0.02 * cols["tenure"] + cols["usage"]
    for name in STRINGS:
        score = score + np.vectorize(effect[name].get, otypes=[float])(cols[name])
    return (score + rng.logistic(size=len(score)) > np.median(score)).astype(np.int64)


def make_input(folder: Path, rows: int, dictionary: bool, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, FILE_ROWS):
        n = min(FILE_ROWS, rows - start)
        cols = _columns(rng, n)
        arrays = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        for name in FEATURES:
            array = pa.array(cols[name], type=pa.string() if name in STRINGS else pa.float64())
            arrays[name] = array.dictionary_encode() if dictionary and name in STRINGS else array
        pq.write_table(pa.table(arrays), folder / f"part-{start // FILE_ROWS:04d}.parquet", row_group_size=ROW_GROUP)
    return folder


def train_models(folder: Path, rows: int = 100_000) -> dict[str, Path]:
    import joblib
    import lightgbm as lgb
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(42)
    cols = _columns(rng, rows)
    y = _labels(rng, cols)
    frame = pd.DataFrame(cols)[FEATURES]
    paths = {}

    pipeline = Pipeline([
        ("prepare", ColumnTransformer([
            ("onehot", OneHotEncoder(handle_unknown="ignore"), list(STRINGS)),
            ("scale", StandardScaler(), NUMBERS),
        ])),
        ("model", LogisticRegression(max_iter=1000)),
    ])
    pipeline.fit(frame, y)
    paths["sklearn"] = folder / "sklearn_pipeline.joblib"
    joblib.dump(pipeline, paths["sklearn"])

    categorical = frame.astype({name: "category" for name in STRINGS})
    booster = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, random_state=0, verbose=-1)
    booster.fit(categorical, y)
    paths["lightgbm"] = folder / "lightgbm.txt"
    booster.booster_.save_model(str(paths["lightgbm"]))
    return paths


# The plain pandas script (c), run as `python -c PANDAS_SCRIPT MODEL INPUT OUTPUT`; it prints its
# phase times as JSON.
PANDAS_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import pandas as pd
model, data, out = sys.argv[1:4]
strings = ["plan", "region", "device"]
features = ["amount", "tenure", "usage", *strings]
t = {"import": time.perf_counter() - t0}
mark = time.perf_counter()
frame = pd.read_parquet(data)
t["read"] = time.perf_counter() - mark
mark = time.perf_counter()
if model.endswith(".txt"):
    import lightgbm as lgb
    booster = lgb.Booster(model_file=model)
    x = frame[features].astype({name: "category" for name in strings})
    t["load+prepare"] = time.perf_counter() - mark
    mark = time.perf_counter()
    p = booster.predict(x)
    proba = np.column_stack([1.0 - p, p])
    labels = (p > 0.5).astype(np.int64)
else:
    import joblib
    pipeline = joblib.load(model)
    x = frame[features]
    t["load+prepare"] = time.perf_counter() - mark
    mark = time.perf_counter()
    proba = pipeline.predict_proba(x)
    labels = pipeline.classes_[np.argmax(proba, axis=1)]
t["predict"] = time.perf_counter() - mark
mark = time.perf_counter()
pd.DataFrame({"id": frame["id"], "prediction": labels, "probability": list(proba)}).to_parquet(out)
t["write"] = time.perf_counter() - mark
print(json.dumps(t))
"""


def run_lakeinfer(model: Path, data: Path, out: Path) -> float:
    """Seconds of the real CLI, process start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--input", str(data),
               "--output", str(out), "--keep", "id", "--quiet"]
    if model.suffix == ".joblib":
        command.insert(command.index("--input"), "--trust-model")
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def run_pandas(model: Path, data: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Seconds of the pandas script, process start-up included, and its own phase times."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PANDAS_SCRIPT, str(model), str(data), str(out)],
                          check=True, stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def compare(lakeinfer_out: Path, pandas_out: Path, rows: int) -> str:
    """'ok', or what differs between the two outputs."""
    ours = pq.ParquetDataset(lakeinfer_out).read(columns=["id", "prediction", "probability"]).sort_by("id")
    theirs = pq.read_table(pandas_out, columns=["id", "prediction", "probability"]).sort_by("id")
    if ours.num_rows != rows or theirs.num_rows != rows:
        return f"row counts differ: lakeinfer {ours.num_rows:,}, pandas {theirs.num_rows:,}, input {rows:,}"
    if not np.array_equal(ours["id"].to_numpy(), theirs["id"].to_numpy()):
        return "ids differ"
    labels = ours["prediction"].to_numpy(), theirs["prediction"].to_numpy()
    if not np.array_equal(*labels):
        return f"{int(np.sum(labels[0] != labels[1])):,} predictions differ"

    def matrix(table: pa.Table) -> np.ndarray:
        column = table["probability"].combine_chunks()
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)

    gap = float(np.max(np.abs(matrix(ours) - matrix(theirs))))
    return "ok" if gap <= 1e-6 else f"probabilities differ by up to {gap:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dictionary", action="store_true", help="write the string columns dictionary-encoded")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant; the best is kept")
    parser.add_argument("--models", default="sklearn,lightgbm", help="comma list of sklearn, lightgbm")
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="lakeinfer-bench-"))
    encoding = "dictionary" if args.dictionary else "plain string"
    print(f"machine: {CORES} cores; input {args.rows:,} rows: id, {len(NUMBERS)} float64, {len(STRINGS)} "
          f"{encoding} columns; best of {args.repeat} runs; work folder {work}", flush=True)
    data = make_input(work / "input", args.rows, args.dictionary)
    models = train_models(work)
    rows_table = []
    for name in args.models.split(","):
        model = models[name]
        b = c = float("inf")
        phases: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved, so a busy spell hits both alike
            b = min(b, run_lakeinfer(model, data, work / f"out-{name}"))
            seconds, times = run_pandas(model, data, work / f"pandas-{name}.parquet")
            if seconds < c:
                c, phases = seconds, times
        check = compare(work / f"out-{name}", work / f"pandas-{name}.parquet", args.rows)
        shown = ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
        print(f"  {name}: lakeinfer {b:.2f}s, pandas {c:.2f}s ({shown}); outputs: {check}", flush=True)
        rows_table.append((name, args.rows / b, args.rows / c, check))
    print(f"{'model':<10}{'(b) lakeinfer':>15}{'(c) pandas':>13}{'b/c':>7}   rows/s   outputs")
    for name, b_rate, c_rate, check in rows_table:
        print(f"{name:<10}{b_rate:>15,.0f}{c_rate:>13,.0f}{b_rate / c_rate:>7.2f}            {check}")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
