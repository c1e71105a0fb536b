"""Spark ML PipelineModels trained in the test, scored by Spark's own ``transform`` and by the
JVM-free reader, and compared column by column.

``spark`` (tests/conftest.py) gives the local Spark session these tests share. ``fit_save`` fits
a pyspark Pipeline on rows and saves the PipelineModel. ``spark_scores`` is Spark's transform of
the same rows; ``local_scores`` goes through lakeinfer's local engine (the CLI's code path,
in-process, one worker). ``assert_same`` compares what both added: doubles within 1e-9, vectors
element-wise, strings equal, the same rows dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import lakeinfer
from tests.conftest import read_output

ATOL = 1e-9
ID = "id"


def spark_session() -> Any:
    """The local Spark session these tests share (the ``spark`` fixture of tests/conftest.py):
    the running one, or a new one where a test module stopped its own."""
    from tests.conftest import spark_session as shared

    spark = shared()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    """For modules whose module-scoped fixtures need the session: ``spark = sparkml_helpers.spark``."""
    return spark_session()


def frame_of(spark: Any, rows: pd.DataFrame | list[dict[str, Any]], schema: str) -> Any:
    """A Spark DataFrame of ``rows`` (``schema``: Spark DDL of their columns) with a row id, so
    both sides can be lined up. A DataFrame's missing values (None, NaN) become null; pass a list
    of dicts to keep NaN apart from null."""
    if isinstance(rows, pd.DataFrame):
        rows = [{k: (None if _missing(v) else v) for k, v in r.items()} for r in rows.to_dict("records")]
    names = [part.strip().split()[0] for part in schema.split(",")]
    records = [(i, *(r.get(n) for n in names)) for i, r in enumerate(rows)]
    return spark.createDataFrame(records, f"{ID} long, {schema}")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def fit_save(stages: list[Any], train: Any, path: Path) -> Path:
    """Fit ``stages`` on ``train`` as a Pipeline and save the PipelineModel under ``path``."""
    from pyspark.ml import Pipeline

    Pipeline(stages=stages).fit(train).write().overwrite().save(str(path))
    return path


def spark_scores(spark: Any, model: Path, df: Any) -> pd.DataFrame:
    """Spark's own transform of ``df``: the id and every column the model added (vectors as lists)."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.functions import when

    out = PipelineModel.load(str(model)).transform(df)
    added = [f for f in out.schema.fields if f.name not in df.columns]
    # vector_to_array fails on a null vector (a one-hot of null), so null stays null around it
    cols = [out[ID]] + [when(out[f.name].isNotNull(), vector_to_array(out[f.name])).alias(f.name)
                        if isinstance(f.dataType, VectorUDT) else out[f.name] for f in added]
    return out.select(*cols).toPandas().sort_values(ID).reset_index(drop=True)


def local_scores(model: Path, df: Any, tmp_path: Path, *, on_error: str = "fail") -> pd.DataFrame:
    """lakeinfer's local engine over the same rows (written to Parquet by Spark's own schema)."""
    source = tmp_path / f"in-{model.name}"
    table = df.toArrow()  # not via pandas, which turns a long column holding null into doubles
    source.mkdir(exist_ok=True)
    pq.write_table(table, source / "part-0.parquet")
    out = tmp_path / f"out-{model.name}-{on_error}"
    lakeinfer.batch(str(source), str(out), model=str(model), keep=[ID], on_error=on_error, workers=1,
                    overwrite=True)
    return read_output(out).sort_values(ID).reset_index(drop=True)


def assert_same(expected: pd.DataFrame, got: pd.DataFrame, *, atol: float = ATOL) -> None:
    """Spark's columns equal lakeinfer's: the same rows, doubles within ``atol``, the rest exactly."""
    assert got[ID].tolist() == expected[ID].tolist(), "different rows (dropped or kept)"
    for name in expected.columns:
        assert name in got.columns, f"lakeinfer did not write '{name}' (it wrote {list(got.columns)})"
        want, have = expected[name].tolist(), got[name].tolist()
        for row, (a, b) in enumerate(zip(want, have, strict=True)):
            _same(a, b, atol, f"column '{name}', row id {expected[ID][row]}")


def _same(a: Any, b: Any, atol: float, where: str) -> None:
    if isinstance(a, list | np.ndarray) or isinstance(b, list | np.ndarray):
        a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert a_.shape == b_.shape, f"{where}: {a_.shape} values, lakeinfer {b_.shape}"
        np.testing.assert_allclose(b_, a_, rtol=0, atol=atol, equal_nan=True, err_msg=where)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is None and b is None, f"{where}: {a!r} vs {b!r}"
            return
        np.testing.assert_allclose(float(b), float(a), rtol=0, atol=atol, equal_nan=True, err_msg=where)
    else:
        assert a == b, f"{where}: Spark {a!r}, lakeinfer {b!r}"
