"""ONNX models through onnxruntime."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, SchemaError
from ..schema import Signature, TensorSpec, column_or_error
from ._base import Model, TabularModel
from ._frame import STRING, FeatureKinds
from ._run_size import RunSizer

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _dtype(ort_type: str) -> str:
    if ort_type.startswith("seq(map"):
        return "float64"
    return _ORT_DTYPES.get(ort_type, ort_type)


def _written_dtype(ort_type: str, shape: Sequence[Any]) -> str:
    """The dtype as written: vectors of floats become list<double> (see schema.to_arrow)."""
    dtype = _dtype(ort_type)
    if (len(shape) >= 2 or ort_type.startswith("seq(map")) and dtype.startswith("float"):
        return "float64"
    return dtype


def _shape(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape) or (None,)


def _output_name(name: str, count: int) -> str:
    """Spark ML's names for the usual classifier outputs (skl2onnx: output_label, output_probability)."""
    if re.search(r"label", name, re.I):
        return "prediction"
    if re.search(r"prob", name, re.I):
        return "probability"
    return "prediction" if count == 1 else name


def _session(path: str, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads would take the cycles the read-ahead and write-behind threads need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in ort.get_available_providers() if p in ("CUDAExecutionProvider", "CPUExecutionProvider")]
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc


class _OnnxOutputs:
    """Runs the session and names its outputs the Spark ML way."""

    def __init__(self, session: Any) -> None:
        self.session = session
        outs = session.get_outputs()
        self.raw_names = [o.name for o in outs]
        self.names = [_output_name(o.name, len(outs)) for o in outs]
        if len(set(self.names)) != len(self.names):  # two "label"s: keep the model's own names
            self.names = list(self.raw_names)
        self.specs = tuple(TensorSpec(n, _written_dtype(o.type, o.shape), _shape(o.shape))
                           for n, o in zip(self.names, outs, strict=True))
        self.sizer: RunSizer | None = None  # set where the rows may be scored in several calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.sizer is not None and len(feeds) == 1:
            ((name, x),) = feeds.items()
            results = self.sizer.run(lambda rows: self._rows(name, rows), x)
        else:
            results = self.session.run(self.raw_names, feeds)
        return {name: _zipmap_to_array(value) for name, value in zip(self.names, results, strict=True)}

    def _rows(self, name: str, rows: np.ndarray) -> list[Any]:
        """A row-wise graph's outputs for ``rows``. A lone row goes in twice: onnxruntime multiplies
        one row by a matrix-vector product, which sums in another order than its many-row product
        (a linear model's probabilities differed in the last float32 bits), so a row's answer would
        depend on the rows it came with (the last row of a file, a lone message in a stream)."""
        if len(rows) != 1:
            return list(self.session.run(self.raw_names, {name: rows}))
        results = self.session.run(self.raw_names, {name: np.concatenate([rows, rows])})
        return [value[:1] for value in results]


def _zipmap_to_array(value: Any) -> Any:
    # skl2onnx's ZipMap gives a list of {class: probability}; export with zipmap=False to skip this.
    # Every row's map has the classes in the same order (ZipMap's labels): its values, read in C
    # (map and chain, no Python loop per row), are the [N, K] probabilities.
    if isinstance(value, list) and value and isinstance(value[0], dict):
        width = len(value[0])
        flat = np.fromiter(itertools.chain.from_iterable(map(dict.values, value)), dtype=np.float64,
                           count=len(value) * width)
        return flat.reshape(len(value), width)
    return value


# ai.onnx.ml's names for the labels of a classifier (TreeEnsemble, Linear, SVM) and of ZipMap
_CLASS_LABELS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")


def _graph_classes(path: str) -> tuple[Any, ...] | None:
    """The class labels in the graph: ZipMap's keys, else the last ai.onnx.ml classifier's labels."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # onnxruntime loaded it: an onnx package that cannot is no reason to fail
        return None
    found = None
    for node in graph.node:  # nodes are in topological order: the last classifier is the output's
        if node.op_type != "ZipMap" and not (node.domain == "ai.onnx.ml" and node.op_type.endswith("Classifier")):
            continue
        for attribute in node.attribute:
            values = onnx.helper.get_attribute_value(attribute) if attribute.name in _CLASS_LABELS else None
            if values:
                found = tuple(v.decode() if isinstance(v, bytes) else int(v) for v in values)
        if node.op_type == "ZipMap" and found is not None:
            return found
    return found


def _classes(path: str, session: Any, width: int | None, dtype: np.dtype) -> tuple[Any, ...] | None:
    """The classifier's labels: from the graph (needs the onnx package), else the exporter's
    'classes' metadata, else the keys of a ZipMap output on one row of zeros."""
    classes = _graph_classes(path)
    if classes is not None:
        return classes
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("classes"):
        return tuple(meta["classes"].split(","))
    outputs = session.get_outputs()
    if width is None or not any(o.type.startswith("seq(map") for o in outputs):
        return None
    try:
        results = session.run(None, {session.get_inputs()[0].name: np.zeros((1, width), dtype=dtype)})
    except Exception:
        return None
    maps = next((r for r in results if isinstance(r, list) and r and isinstance(r[0], dict)), None)
    return tuple(maps[0]) if maps else None


class OnnxTabularModel(TabularModel):
    """An ONNX graph with one 2-D input: the feature columns, assembled in order."""

    flavor = "onnx"

    def __init__(self, path: str, session: Any, *, features: Sequence[str] | None = None) -> None:
        self._outputs = _OnnxOutputs(session)
        (inp,) = session.get_inputs()
        self._input_name = inp.name
        self.input_dtype = np.dtype(_dtype(inp.type))
        # rows may go in several calls when the graph maps each input row to one row of every output
        if not isinstance(inp.shape[0], int) and all(not o.shape or not isinstance(o.shape[0], int)
                                                      for o in session.get_outputs()):
            self._outputs.sizer = RunSizer()
        width = inp.shape[1] if isinstance(inp.shape[1], int) else None
        meta = session.get_modelmeta().custom_metadata_map
        named = tuple(meta["feature_names"].split(",")) if meta.get("feature_names") else None
        classifier = "probability" in self._outputs.names
        signature = Signature(
            inputs=(TensorSpec(inp.name, _dtype(inp.type), _shape(inp.shape)),),
            outputs=self._outputs.specs,
            features=named,
            task="classification" if classifier else "unknown",
            classes=_classes(path, session, width, self.input_dtype) if classifier else None,
        )
        super().__init__(path, signature, features=features, width=width)

    def _predict_array(self, x: np.ndarray, batch: pa.RecordBatch) -> dict[str, Any]:
        return self._outputs.run({self._input_name: x})


class OnnxMultiInputModel(Model):
    """An ONNX graph with several inputs (or a 1-D one): each fed by the column of its name."""

    flavor = "onnx"

    def __init__(self, path: str, session: Any) -> None:
        self._outputs = _OnnxOutputs(session)
        self._inputs = session.get_inputs()
        signature = Signature(
            inputs=tuple(TensorSpec(i.name, _dtype(i.type), _shape(i.shape)) for i in self._inputs),
            outputs=self._outputs.specs,
            features=tuple(i.name for i in self._inputs),
        )
        super().__init__(path, signature)
        self.kinds = FeatureKinds(kinds={i.name: STRING for i in self._inputs if _dtype(i.type) == "string"})

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(i.name for i in self._inputs)

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        feeds = {}
        for spec in self._inputs:
            column = column_or_error(batch, spec.name)
            dtype = _dtype(spec.type)
            if dtype == "string":
                values = np.array(column.to_pylist(), dtype=object)
            else:
                try:
                    values = column.to_numpy(zero_copy_only=False).astype(dtype)
                except (ValueError, TypeError, pa.ArrowInvalid) as exc:
                    raise SchemaError(f"input column '{spec.name}' has type {column.type}; the model needs {dtype}") from exc
            if len(spec.shape) == 2:
                values = values.reshape(-1, 1)
            feeds[spec.name] = values
        return self._outputs.run(feeds)


def load(path: str, *, features: Sequence[str] | None = None, threads: int | None = None, **_: Any) -> Model:
    session = _session(path, threads)
    inputs = session.get_inputs()
    # One 2-D input is a feature matrix, except an (N, 1) input that names its own column.
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and not (
        inputs[0].shape[1] == 1 and features is None
    ):
        return OnnxTabularModel(path, session, features=features)
    return OnnxMultiInputModel(path, session)
