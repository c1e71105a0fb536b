"""Reading a Spark ML model folder: each stage's ``metadata/`` JSON line and ``data/`` Parquet.

The layout is Spark's own (``DefaultParamsWriter`` and each model's ``MLWriter``): a folder with
``metadata/part-00000*`` (one JSON object: ``class``, ``sparkVersion``, ``uid``, ``paramMap``,
``defaultParamMap`` and model-specific fields) and, for fitted models, ``data/`` (Parquet). A
PipelineModel keeps its stages under ``stages/<index>_<uid>/``.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import ModelLoadError

__all__ = ["StageMeta", "dense_matrix", "dense_vector", "read_data", "read_meta", "stage_dirs"]


@dataclass(frozen=True)
class StageMeta:
    """One stage's metadata: its Spark class, the params in effect and where its files are."""

    path: str
    spark_class: str
    uid: str
    spark_version: str
    params: dict[str, Any]  # the defaults overlaid with what was set
    explicit: frozenset[str]  # the params that were set rather than defaulted
    raw: dict[str, Any] = field(repr=False)  # the whole JSON object (model-specific fields too)

    @property
    def short_class(self) -> str:
        return self.spark_class.rsplit(".", 1)[-1]

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def data(self, sub: str = "data") -> pa.Table:
        return read_data(self.path, sub)


def _json_line(folder: str) -> dict[str, Any]:
    parts = sorted(glob.glob(os.path.join(folder, "metadata", "part-*")))
    if not parts:
        raise ModelLoadError(f"{folder} has no metadata/part-* file: not a Spark ML model folder")
    with open(parts[0], encoding="utf-8") as fh:
        line = fh.readline()
    try:
        meta = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{parts[0]}: not Spark ML metadata (invalid JSON: {exc})") from exc
    if not isinstance(meta, dict) or "class" not in meta:
        raise ModelLoadError(f"{parts[0]}: not Spark ML metadata (no 'class')")
    return meta


def read_meta(folder: str) -> StageMeta:
    """The metadata of the model saved in ``folder``."""
    meta = _json_line(folder)
    defaults = dict(meta.get("defaultParamMap") or {})
    explicit = dict(meta.get("paramMap") or {})
    return StageMeta(path=folder, spark_class=str(meta["class"]), uid=str(meta.get("uid", "")),
                     spark_version=str(meta.get("sparkVersion", "unknown")),
                     params={**defaults, **explicit}, explicit=frozenset(explicit), raw=meta)


def stage_dirs(folder: str, uids: list[str]) -> list[str]:
    """The folders of a PipelineModel's stages, in order (``stages/<index>_<uid>``, the index
    zero-padded to as many digits as the number of stages has, as Spark's getStagePath writes it)."""
    out = []
    digits = len(str(len(uids)))  # Spark pads the index to the digits of the stage count: 00_ .. 11_
    for index, uid in enumerate(uids):
        path = os.path.join(folder, "stages", f"{index:0{digits}d}_{uid}")
        if not os.path.isdir(path):
            raise ModelLoadError(f"{folder}: stage {index} ({uid}) has no folder {path}")
        out.append(path)
    return out


def read_data(folder: str, sub: str = "data") -> pa.Table:
    """A stage's Parquet data (Spark writes a folder of part files)."""
    where = os.path.join(folder, sub)
    parts = sorted(glob.glob(os.path.join(where, "*.parquet")))
    if not parts:
        raise ModelLoadError(f"{folder}: no Parquet files under {sub}/")
    return pa.concat_tables([pq.read_table(p) for p in parts])


def dense_vector(value: dict[str, Any] | None) -> np.ndarray:
    """Spark's VectorUDT as stored in Parquet (type 0: sparse size/indices/values, 1: dense values)."""
    if value is None:
        raise ModelLoadError("a stored vector is null")
    if int(value["type"]) == 1:
        return np.asarray(value["values"], dtype=np.float64)
    out = np.zeros(int(value["size"]), dtype=np.float64)
    out[np.asarray(value["indices"], dtype=np.int64)] = np.asarray(value["values"], dtype=np.float64)
    return out


def dense_matrix(value: dict[str, Any]) -> np.ndarray:
    """Spark's MatrixUDT as stored in Parquet: (rows, cols) as numpy, dense or CSC sparse."""
    rows, cols = int(value["numRows"]), int(value["numCols"])
    values = np.asarray(value["values"], dtype=np.float64)
    transposed = bool(value.get("isTransposed"))
    if int(value["type"]) == 1:  # dense: column-major unless transposed (then row-major)
        return values.reshape(rows, cols) if transposed else values.reshape(cols, rows).T
    out = np.zeros((rows, cols), dtype=np.float64)
    ptrs = np.asarray(value["colPtrs"], dtype=np.int64)
    index = np.asarray(value["rowIndices"], dtype=np.int64)
    major = rows if transposed else cols  # CSR when transposed
    for j in range(major):
        for k in range(ptrs[j], ptrs[j + 1]):
            if transposed:
                out[j, index[k]] = values[k]
            else:
                out[index[k], j] = values[k]
    return out
