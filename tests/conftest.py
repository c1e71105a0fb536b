"""Shared fixtures: a small data set in every input format and a trained model of every flavor.

Each model fixture returns a :class:`Trained` holding the model file and the framework's own
predictions for the data set, which the tests compare lakeinfer's output against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from lakeinfer.models.tensorflow import llvm_first

# the TensorFlow tests import TensorFlow when collected: Triton, which torch.export imports, must be
# loaded before it in this process (see llvm_first)
llvm_first()

FEATURES = [f"f{i}" for i in range(5)]
ROWS = 900


@dataclass
class Trained:
    path: Path
    labels: np.ndarray | None = None          # the framework's predicted labels / values
    probability: np.ndarray | None = None     # the framework's class probabilities
    cli: tuple[str, ...] = ()                 # extra CLI options the model needs


def make_frame(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # multiples of 1/1024: exact in float32 and in any text format, so every format scores alike
    x = np.round(rng.normal(size=(rows, len(FEATURES))) * 1024) / 1024
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3]
    frame["label"] = np.digitize(score, [-0.5, 0.5]).astype(np.int64)  # three classes
    frame["binary"] = (score > 0).astype(np.int64)
    frame["target"] = score + 0.1 * x[:, 4]
    return frame


@pytest.fixture(scope="session")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="session")
def X(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[FEATURES]


def write_dataset(frame: pd.DataFrame, folder: Path, fmt: str, *, files: int = 3,
                  row_group_size: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False)
    step = -(-table.num_rows // files)
    for i in range(files):
        part = table.slice(i * step, step)
        path = folder / f"data-{i}.{fmt}"
        if fmt == "parquet":
            pq.write_table(part, path, row_group_size=row_group_size)
        elif fmt == "csv":
            pcsv.write_csv(part, path)
        else:
            with open(path, "w") as fh:
                for row in part.to_pylist():
                    fh.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="session")
def datasets(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {fmt: write_dataset(frame, root / fmt, fmt) for fmt in ("parquet", "csv", "jsonl")}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sklearn_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X, frame["label"])
    path = models_dir / "rf.joblib"
    joblib.dump(model, path)
    return Trained(path, model.predict(X), model.predict_proba(X), ("--trust-model",))


@pytest.fixture(scope="session")
def skops_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # fitted on a bare array: the model does not know its column names
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X.to_numpy(), frame["label"])
    path = models_dir / "lr.skops"
    sio.dump(model, path)
    return Trained(path, model.predict(X.to_numpy()), model.predict_proba(X.to_numpy()),
                   ("--features", ",".join(FEATURES)))


@pytest.fixture(scope="session")
def xgboost_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import xgboost as xgb

    model = xgb.XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1).fit(X, frame["label"])
    path = models_dir / "xgb.json"
    model.save_model(path)
    return Trained(path, model.predict(X), model.predict_proba(X))


@pytest.fixture(scope="session")
def xgboost_binary_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import xgboost as xgb

    model = xgb.XGBClassifier(n_estimators=30, max_depth=4, n_jobs=1).fit(X, frame["binary"])
    path = models_dir / "xgb-binary.ubj"
    model.save_model(path)
    return Trained(path, model.predict(X), model.predict_proba(X))


@pytest.fixture(scope="session")
def lightgbm_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1).fit(X, frame["label"])
    path = models_dir / "lgbm.txt"
    model.booster_.save_model(path)
    return Trained(path, model.predict(X), model.predict_proba(X))


@pytest.fixture(scope="session")
def lightgbm_regressor(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import lightgbm as lgb

    model = lgb.LGBMRegressor(n_estimators=30, verbose=-1, n_jobs=1).fit(X.to_numpy(), frame["target"])
    path = models_dir / "lgbm-reg.txt"
    model.booster_.save_model(path)
    return Trained(path, model.predict(X.to_numpy()), None, ("--features", ",".join(FEATURES)))




def _torch_net() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()


@pytest.fixture(scope="session")
def torchscript_model(X: pd.DataFrame, models_dir: Path) -> Trained:
    import torch

    net = _torch_net()
    path = models_dir / "net.pt"
    scripted = torch.jit.trace(net, torch.zeros(2, len(FEATURES)))
    torch.jit.save(scripted, str(path), _extra_files={"lakeinfer.json": json.dumps({"features": FEATURES})})
    with torch.inference_mode():
        expected = net(torch.from_numpy(X.to_numpy(np.float32))).numpy()[:, 0]
    return Trained(path, expected)


@pytest.fixture(scope="session")
def torch_export_model(X: pd.DataFrame, models_dir: Path) -> Trained:
    import torch

    net = _torch_net()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(8, len(FEATURES)),), dynamic_shapes=({0: batch},))
    path = models_dir / "net.pt2"
    torch.export.save(program, str(path))
    with torch.inference_mode():
        expected = net(torch.from_numpy(X.to_numpy(np.float32))).numpy()[:, 0]
    return Trained(path, expected, None, ("--features", ",".join(FEATURES)))


@pytest.fixture(scope="session")
def mlflow_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X, frame["label"])
    path = models_dir / "mlflow-gb"
    mlflow.sklearn.save_model(model, str(path), signature=infer_signature(X, model.predict(X)),
                              serialization_format="cloudpickle")
    return Trained(path, model.predict(X), None, ("--trust-model",))


@pytest.fixture(scope="session")
def onnx_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X.to_numpy(np.float32), frame["label"])
    onx = to_onnx(model, X.to_numpy(np.float32)[:1], options={"zipmap": False})
    path = models_dir / "rf.onnx"
    path.write_bytes(onx.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, proba = session.run(None, {session.get_inputs()[0].name: X.to_numpy(np.float32)})
    return Trained(path, labels, proba, ("--features", ",".join(FEATURES)))


@pytest.fixture(scope="session")
def onnx_zipmap_model(frame: pd.DataFrame, X: pd.DataFrame, models_dir: Path) -> Trained:
    """skl2onnx's default export: probabilities as a list of {class: p} maps."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500).fit(X.to_numpy(np.float32), frame["label"])
    onx = to_onnx(model, X.to_numpy(np.float32)[:1])
    path = models_dir / "lr-zipmap.onnx"
    path.write_bytes(onx.SerializeToString())
    return Trained(path, model.predict(X.to_numpy(np.float32)), model.predict_proba(X.to_numpy(np.float32)),
                   ("--features", ",".join(FEATURES)))


FLAVOR_FIXTURES = [
    "sklearn_model", "skops_model", "xgboost_model", "xgboost_binary_model", "lightgbm_model",
    "lightgbm_regressor", "torchscript_model", "torch_export_model", "mlflow_model", "onnx_model",
    "onnx_zipmap_model",
]


def read_output(folder: Path) -> pd.DataFrame:
    """Every part of an output folder, sorted by id."""
    table = pq.read_table(folder)
    return table.to_pandas().sort_values("id").reset_index(drop=True)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real ``lakeinfer`` command in a fresh process."""
    return subprocess.run([sys.executable, "-m", "lakeinfer", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def lake(tmp_path: Path) -> dict[str, Any]:
    """A pyiceberg SQL catalog on SQLite with a local warehouse: the CLI's environment for it, the
    catalog, a staging folder and the test's folder (a working directory for a command)."""
    from pyiceberg.catalog import load_catalog

    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    env = {f"PYICEBERG_CATALOG__DEFAULT__{k.upper()}": v for k, v in props.items()}
    catalog = load_catalog("default", **props)
    catalog.create_namespace("ns")
    return {"env": env, "catalog": catalog, "staging": tmp_path / "staging", "cwd": tmp_path}


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real Kafka broker for the whole run (every test uses topics of its own)."""
    from tests.kafka_helpers import start_broker, stop_broker

    home = tmp_path_factory.mktemp("kafka")
    bootstrap = start_broker(home)
    yield bootstrap
    stop_broker(home)


def spark_session():  # type: ignore[no-untyped-def]
    """The tests' Spark session on local[2], with the Iceberg, Delta and SQLite JDBC jars.

    Jars given by spark.jars.packages reach only a JVM that starts with them: a JVM another
    test module started without them is shut down first (its sessions stopped), then a new one
    starts. Later modules' ``getOrCreate`` reuse this one.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from lakeinfer.spark import tables as _spark_tables
    from lakeinfer.spark.session import session

    gateway = SparkContext._gateway
    if gateway is not None:
        try:
            SparkContext._jvm.java.lang.Class.forName("org.apache.iceberg.spark.SparkCatalog")  # type: ignore[union-attr]
        except Exception:
            # the active session is the thread's: one the API started on a thread of its own is
            # only the class's instantiated one, which a later builder would reuse, its JVM gone
            active = SparkSession.getActiveSession() or SparkSession._instantiatedSession
            if active is not None:
                active.stop()
            gateway.shutdown()
            proc = getattr(gateway, "proc", None)
            if proc is not None:
                proc.stdin.close()
                proc.wait(timeout=60)
            SparkContext._gateway = None
            SparkContext._jvm = None
    return session("local[2]", {"spark.sql.shuffle.partitions": "4",
                                **_spark_tables.jars_conf({"iceberg", "delta"})})


@pytest.fixture
def spark():  # type: ignore[no-untyped-def]
    """The tests' local Spark session (see spark_session), for tests that take it as a fixture."""
    return spark_session()
