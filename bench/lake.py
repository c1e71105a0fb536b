"""Local batch scoring throughput from and to an Iceberg table, against a Parquet folder.

The input is N generated rows (--rows) of ``id`` int64 + 20 float32 features, written once as a
folder of Parquet files (1M rows a file, row groups of 131,072 rows), and the very same files
copied into the warehouse of a pyiceberg SQL catalog (a SQLite file, a local ``file://``
warehouse) and registered as table ``bench.input`` with ``add_files``: same rows, same file and
row-group layout. The catalog is named ``bench`` and reaches the CLI through
``PYICEBERG_CATALOG__BENCH__*`` environment variables and ``--catalog bench``.

One model, the RandomForest (100 trees, depth 12) of bench/batch_local.py exported to ONNX,
scores it through the real CLI, ``python -m lakeinfer batch --model M --input X --output Y
--keep id --quiet``, process start-up included, in three variants:

  (p) parquet   Parquet folder -> Parquet folder
  (i) ice-in    iceberg:bench.input -> Parquet folder
  (b) ice-both  iceberg:bench.input -> iceberg:bench.out_N (a fresh table each run: plan,
                read through pyiceberg, stage, and the one commit)

each run --repeat times, interleaved (the best kept, as the machine may be busy). It prints the
rows/s of each (wall clock), the CPU seconds of each (user + system, all its processes: steadier
than the wall clock on a shared machine) and the ratios i/p and b/p (the target is >= 0.9), and checks that the three
outputs hold the same predictions, and probabilities within 1e-6 (sorted by id; the batches cut
the rows differently, and onnxruntime's float32 sums may round by an ulp otherwise). It never runs in CI and
asserts nothing.

    python bench/lake.py                    # 2M rows
    python bench/lake.py --rows 200000      # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_local import FEATURES, make_input  # noqa: E402

CORES = os.cpu_count() or 1
CATALOG = "bench"


def train_forest(folder: Path) -> Path:
    """bench/batch_local.py's RandomForest, exported to ONNX with the feature names."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(42)
    x = rng.normal(size=(60_000, len(FEATURES))).astype(np.float32)
    y = ((x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3]) > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=-1, random_state=0).fit(x, y)
    onx = to_onnx(model, x[:1], options={"zipmap": False})
    entry = onx.metadata_props.add()
    entry.key, entry.value = "feature_names", ",".join(FEATURES)
    path = folder / "random_forest.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def make_catalog(work: Path, data: Path) -> tuple[dict[str, str], object]:
    """The SQL catalog, its environment for the CLI, and the input table over copies of ``data``'s files."""
    from pyiceberg.catalog import load_catalog

    warehouse = work / "warehouse"
    warehouse.mkdir()
    props = {"type": "sql", "uri": f"sqlite:///{work / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    env = {f"PYICEBERG_CATALOG__{CATALOG.upper()}__{k.upper()}": v for k, v in props.items()}
    catalog = load_catalog(CATALOG, **props)
    catalog.create_namespace("bench")
    files = sorted(data.glob("*.parquet"))
    table = catalog.create_table("bench.input", schema=pq.read_schema(files[0]))
    target = Path(table.location().removeprefix("file://")) / "data"
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for file in files:
        shutil.copyfile(file, target / file.name)
        copies.append(f"file://{target / file.name}")
    table.add_files(copies)
    return env, catalog


def run_cli(model: Path, source: str, output: str, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of the real CLI, process start-up included, and the CPU seconds of its processes."""
    command = [sys.executable, "-m", "lakeinfer", "batch", "--model", str(model), "--features", ",".join(FEATURES),
               "--input", source, "--output", output, "--keep", "id", "--quiet", "--catalog", CATALOG]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **env}, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def read_output(catalog: object, output: str) -> pa.Table:
    if output.startswith("iceberg:"):
        table = catalog.load_table(output[len("iceberg:"):]).scan().to_arrow()  # type: ignore[attr-defined]
    else:
        table = pq.ParquetDataset(output).read()
    return table.select(["id", "prediction", "probability"]).sort_by("id")


def compare(reference: pa.Table, other: pa.Table, rows: int) -> str:
    if reference.num_rows != rows or other.num_rows != rows:
        return f"row counts differ: {reference.num_rows:,} and {other.num_rows:,} of {rows:,}"
    if not np.array_equal(reference["id"].to_numpy(), other["id"].to_numpy()):
        return "ids differ"
    labels = reference["prediction"].to_numpy(), other["prediction"].to_numpy()
    if not np.array_equal(*labels):
        return f"{int(np.sum(labels[0] != labels[1])):,} predictions differ"

    def matrix(table: pa.Table) -> np.ndarray:
        column = table["probability"].combine_chunks()
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)

    gap = float(np.max(np.abs(matrix(reference) - matrix(other))))
    # onnxruntime's float32 tree sums may round differently with another batch composition
    return f"same predictions, probabilities within {gap:.1g}" if gap <= 1e-6 else f"probabilities differ by {gap:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant; the best is kept")
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="lakeinfer-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {CORES} cores; input {args.rows:,} rows x {len(FEATURES)} float32, 1M-row files, 131,072-row "
          f"row groups; best of {args.repeat} runs; work folder {work}", flush=True)
    data = make_input(work / "input", args.rows)
    env, catalog = make_catalog(work, data)
    model = train_forest(work)

    variants = {
        "parquet": (str(data), lambda n: str(work / "out-parquet")),
        "ice-in": ("iceberg:bench.input", lambda n: str(work / "out-ice-in")),
        "ice-both": ("iceberg:bench.input", lambda n: f"iceberg:bench.out_{n}"),
    }
    best = {name: float("inf") for name in variants}
    cpu = {name: float("inf") for name in variants}
    last: dict[str, str] = {}
    for n in range(args.repeat):  # interleaved, so a busy spell hits all alike
        for name, (source, output_for) in variants.items():
            output = output_for(n)
            if "://" not in output and not output.startswith("iceberg:"):
                shutil.rmtree(output, ignore_errors=True)
            shutil.rmtree(work / ".lakeinfer-staging", ignore_errors=True)
            seconds, cpu_seconds = run_cli(model, source, output, env, work)
            print(f"  run {n + 1} {name:<9} {seconds:6.2f}s wall, {cpu_seconds:6.2f}s CPU", flush=True)
            best[name] = min(best[name], seconds)
            cpu[name] = min(cpu[name], cpu_seconds)
            last[name] = output

    reference = read_output(catalog, last["parquet"])
    checks = {name: compare(reference, read_output(catalog, last[name]), args.rows) for name in ("ice-in", "ice-both")}
    rate = {name: args.rows / seconds for name, seconds in best.items()}
    print(f"{'variant':<10}{'wall s':>8}{'rows/s':>12}{'x parquet':>11}{'CPU s':>8}{'x parquet':>11}   outputs vs parquet")
    for name in variants:
        check = checks.get(name, "(reference)")
        print(f"{name:<10}{best[name]:>8.2f}{rate[name]:>12,.0f}{rate[name] / rate['parquet']:>11.2f}"
              f"{cpu[name]:>8.2f}{cpu['parquet'] / cpu[name]:>11.2f}   {check}")
    print(f"iceberg-in / parquet: {rate['ice-in'] / rate['parquet']:.2f}x; "
          f"iceberg-in-and-out / parquet: {rate['ice-both'] / rate['parquet']:.2f}x (target >= 0.9x)")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
