"""The quickstart demo: train a small churn model, export it to ONNX, make a data set, score it
with ``lakeinfer batch`` on the embedded local engine and show the predictions.

Everything lands in ./demo-output; run it again to start over.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1] / "demo-output"
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "data_gb", "late_payments", "contract_years"]


def make_customers(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.integers(1, 72, rows), rng.uniform(10, 120, rows), rng.poisson(1.5, rows),
        rng.gamma(2.0, 8.0, rows), rng.poisson(0.4, rows), rng.choice([0, 1, 2], rows),
    ]).astype(np.float32)
    risk = 0.04 * x[:, 1] - 0.05 * x[:, 0] + 0.6 * x[:, 2] + 0.9 * x[:, 4] - 1.2 * x[:, 5]
    churned = (risk + rng.normal(0, 1, rows) > 0.5).astype(np.int64)
    table = pa.table({"customer_id": pa.array(np.arange(rows) + 100_000, pa.int64()),
                      **{name: x[:, i] for i, name in enumerate(FEATURES)}})
    return table, churned


def run(*args: str) -> None:
    print(f"\n$ lakeinfer {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "lakeinfer", *args], check=True)


def main() -> None:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "customers").mkdir(parents=True)
    train, labels = make_customers(20_000, seed=1)
    x_train = np.column_stack([train.column(f).to_numpy() for f in FEATURES])
    model = RandomForestClassifier(n_estimators=60, max_depth=8, n_jobs=-1, random_state=0).fit(x_train, labels)
    onx = to_onnx(model, x_train[:1], options={"zipmap": False})
    entry = onx.metadata_props.add()  # the model names its own input columns
    entry.key, entry.value = "feature_names", ",".join(FEATURES)
    (ROOT / "churn.onnx").write_bytes(onx.SerializeToString())
    print(f"trained a 60-tree random forest on {len(labels):,} customers -> {ROOT / 'churn.onnx'}")

    customers, _ = make_customers(400_000, seed=2)
    for i in range(4):
        pq.write_table(customers.slice(i * 100_000, 100_000), ROOT / "customers" / f"part-{i}.parquet",
                       row_group_size=50_000)
    print(f"wrote {customers.num_rows:,} customers to score in {ROOT / 'customers'} (4 Parquet files)")

    (ROOT / "job.toml").write_text(
        '[model]\npath = "churn.onnx"\n\n'
        '[[pipeline.steps]]\nop = "model"\n\n'
        '[[pipeline.steps]]\nop = "label_map"\nlabels = ["stays", "churns"]\n\n'
        '[batch]\ninput = "customers"\noutput = "predictions"\nkeep = ["customer_id"]\n'
    )
    run("inspect", "--model", str(ROOT / "churn.onnx"))
    run("batch", "--spec", str(ROOT / "job.toml"))

    scored = pq.read_table(ROOT / "predictions").sort_by("customer_id")
    print(f"\nfirst predictions from {ROOT / 'predictions'}:")
    print(scored.slice(0, 8).to_pandas().to_string(index=False))
    counts = scored.column("prediction").value_counts().to_pylist()
    print("\npredicted: " + ", ".join(f"{c['values']}: {c['counts']:,}" for c in counts))


if __name__ == "__main__":
    main()
