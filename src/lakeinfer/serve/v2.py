"""Open Inference Protocol (KServe v2) codec: request JSON (and the binary tensor extension)
to an Arrow record batch, and output columns back to response tensors."""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from .._version import __version__
from ..errors import InputError
from ..schema import pack_features, split_matrix

__all__ = ["ProtocolError", "DATATYPES", "bytes_elements", "decode_request", "loads", "encode_response", "datatype_of",
           "model_metadata", "output_tensor", "requested_outputs", "server_metadata", "tensor_bytes", "to_batch"]

HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}
_BY_NUMPY = {np.dtype(v).name: k for k, v in DATATYPES.items() if v is not object}


class ProtocolError(InputError):
    """A request that does not follow the protocol; the message names the field."""


@functools.lru_cache(maxsize=64)
def datatype_of(arrow_type: pa.DataType) -> str:
    """The v2 datatype of an Arrow column (a list column: its element's)."""
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_binary(arrow_type):
        return "BYTES"
    try:
        return _BY_NUMPY[np.dtype(arrow_type.to_pandas_dtype()).name]
    except (KeyError, NotImplementedError, TypeError):
        return "BYTES"


def server_metadata() -> dict[str, Any]:
    return {"name": "lakeinfer", "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, flavor: str | None, inputs: pa.Schema, outputs: pa.Schema,
                   tensor: tuple[str, int] | None = None) -> dict[str, Any]:
    """The v2 model metadata: the data plane's Arrow schemas as tensors; a model that names no
    features (``tensor``: its input's name and width K) shows its one input of shape [-1, K]."""
    def tensors(schema: pa.Schema) -> list[dict[str, Any]]:
        return [{"name": f.name, "datatype": datatype_of(f.type),
                 "shape": [-1, -1] if _is_vector(f.type) else [-1]} for f in schema]

    if tensor is not None:
        shown = [{"name": tensor[0], "datatype": datatype_of(inputs[0].type) if len(inputs) else "FP64",
                  "shape": [-1, tensor[1]]}]
    else:
        shown = tensors(inputs)
    return {"name": name, "versions": ["1"], "platform": f"lakeinfer_{flavor}" if flavor else "lakeinfer",
            "inputs": shown, "outputs": tensors(outputs)}


def _is_vector(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"{where}: field '{key}' must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {list: "a list", str: "a string", dict: "an object", int: "an integer"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: field 'parameters' must be an object")
    return params


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return data


def bytes_elements(blob: bytes, where: str) -> list[str]:
    values, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise ProtocolError(f"{where}: truncated BYTES element")
        (size,) = struct.unpack_from("<I", blob, offset)
        values.append(blob[offset + 4: offset + 4 + size].decode("utf-8", "replace"))
        offset += 4 + size
    return values


def _tensor(spec: dict[str, Any], index: int, blobs: list[bytes]) -> tuple[str, np.ndarray, list[int]]:
    where = f"inputs[{index}]"
    if not isinstance(spec, dict):
        raise ProtocolError(f"{where} must be an object")
    name = _field(spec, "name", str, where)
    where = f"input '{name}'"
    shape = _field(spec, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or not shape:
        raise ProtocolError(f"{where}: shape must be a non-empty list of non-negative integers, not {shape}")
    datatype = _field(spec, "datatype", str, where)
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: unknown datatype '{datatype}' (one of {', '.join(DATATYPES)})")
    count = math.prod(shape)
    binary_size = _params(spec, where).get("binary_data_size")
    if binary_size is not None:
        if not blobs:
            raise ProtocolError(f"{where}: binary_data_size given but the request carries no binary data")
        blob = blobs.pop(0)
        if datatype == "BYTES":
            values = np.array(bytes_elements(blob, where), dtype=object)
        else:
            dtype = np.dtype(DATATYPES[datatype])
            if len(blob) != count * dtype.itemsize:
                raise ProtocolError(f"{where}: {len(blob)} bytes of binary data for shape {shape} of {datatype}")
            values = np.frombuffer(blob, dtype=dtype)
    else:
        data = _flatten(_field(spec, "data", list, where))
        try:
            values = np.array(data, dtype=DATATYPES[datatype]) if datatype != "BYTES" else np.array(
                [str(v) for v in data], dtype=object)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"{where}: data do not match datatype {datatype} ({exc})") from None
        if datatype != "BYTES" and values.dtype == object:
            raise ProtocolError(f"{where}: data do not match datatype {datatype}")
    if values.size != count:
        raise ProtocolError(f"{where}: shape {shape} needs {count} values, got {values.size}")
    return name, values, shape


def loads(text: bytes) -> Any:
    """A request's JSON: orjson's parse (a tenth of the standard library's time for a small
    tensor), and the standard library's where orjson refuses what JSON-speaking clients send
    (NaN and Infinity tokens, integers past 64 bits), so both accept the same requests."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None


def decode_request(body: bytes, header_length: int | None, features: Sequence[str],
                   tensor: tuple[str, int] | None = None) -> tuple[pa.RecordBatch, dict[str, Any]]:
    """The request's rows as a record batch, and the request JSON (for id and outputs).

    An input of shape [N] (or [N, 1]) is one column; an input of shape [N, K] whose name is not
    a feature column and whose K equals the number of features gives the feature columns (when it
    is the only input, as one :data:`~lakeinfer.schema.PACKED` column of K numbers per row, which
    the runtime hands to the model whole or splits into ``features``); any other [N, K] input is a
    column of K-vectors. For a model that names no features (``tensor``: its input's name and K)
    the request holds that one [N, K] input, packed the same way.
    """
    json_part, blob_part = (body[:header_length], body[header_length:]) if header_length is not None else (body, b"")
    request = loads(json_part)
    if not isinstance(request, dict):
        raise ProtocolError("the request body must be a JSON object")
    inputs = _field(request, "inputs", list, "request")
    if not inputs:
        raise ProtocolError("request: 'inputs' is empty")
    blobs = _split_blobs(inputs, blob_part)
    return to_batch((_tensor(spec, i, blobs) for i, spec in enumerate(inputs)), features, tensor), request


def to_batch(tensors: Iterable[tuple[str, np.ndarray, Sequence[int]]], features: Sequence[str],
             tensor: tuple[str, int] | None = None) -> pa.RecordBatch:
    """Decoded input tensors, (name, flat values, shape), as a record batch (see decode_request)."""
    if tensor is not None:
        return _one_tensor(tensors, features, *tensor)
    columns: dict[str, pa.Array] = {}
    rows: int | None = None
    given = list(tensors)
    if len(given) == 1:
        name, values, shape = given[0]
        width = math.prod(shape[1:]) if len(shape) > 1 else 1
        if width > 1 and width == len(features) and name not in features and values.dtype != object:
            # the one [N, K] tensor of the features: passed on whole, not split into K columns
            return pack_features(values.reshape(shape[0], width))
    for name, values, shape in given:
        n = shape[0]
        if rows is not None and n != rows:
            raise ProtocolError(f"input '{name}' has {n} rows; the other inputs have {rows}")
        rows = n
        width = math.prod(shape[1:]) if len(shape) > 1 else 1
        if width == 1:
            columns[name] = pa.array(values.reshape(n))
        elif name not in features and width == len(features):
            for feature, column in zip(features, split_matrix(values.reshape(n, width), features), strict=True):
                columns[feature] = column
        else:
            matrix = values.reshape(n, width)
            offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    return pa.RecordBatch.from_pydict(columns)


def _one_tensor(tensors: Iterable[tuple[str, np.ndarray, Sequence[int]]], columns: Sequence[str],
                own: str, width: int) -> pa.RecordBatch:
    """The one [N, K] input of a model that names no features, split into its internal ``columns``."""
    found: pa.RecordBatch | None = None
    wanted = f"the model takes one input, '{own}' of shape [-1, {width}]"
    for name, values, shape in tensors:
        if name != own:
            raise ProtocolError(f"input '{name}' is not the model's: {wanted}")
        if found is not None:
            raise ProtocolError(f"input '{name}' is given twice: {wanted}")
        if len(shape) != 2 or shape[1] != width:
            raise ProtocolError(f"input '{name}': shape {list(shape)} does not fit the model's [-1, {width}]")
        matrix = values.reshape(shape[0], width)
        # passed on whole (see schema.PACKED); a BYTES tensor as its columns, for the model's message
        found = (pack_features(matrix) if values.dtype != object
                 else pa.RecordBatch.from_arrays(split_matrix(matrix, columns), names=list(columns)))
    if found is None:
        raise ProtocolError(f"request: 'inputs' is empty ({wanted})")
    return found


def _split_blobs(inputs: list[Any], blob_part: bytes) -> list[bytes]:
    blobs, offset = [], 0
    for spec in inputs:
        size = _params(spec, "input").get("binary_data_size") if isinstance(spec, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob_part):
                raise ProtocolError(f"input '{spec.get('name')}': binary_data_size {size} does not fit the body")
            blobs.append(blob_part[offset: offset + size])
            offset += size
    return blobs


def requested_outputs(request: dict[str, Any], available: Sequence[str]) -> list[tuple[str, bool]]:
    """(output name, as binary) for each output to send; all of them when none are asked for."""
    binary_default = bool(_params(request, "request").get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(n, binary_default) for n in available]
    if not isinstance(asked, list):
        raise ProtocolError("request: field 'outputs' must be a list")
    chosen = []
    for i, spec in enumerate(asked):
        name = _field(spec, "name", str, f"outputs[{i}]") if isinstance(spec, dict) else None
        if name is None:
            raise ProtocolError(f"outputs[{i}] must be an object with a name")
        if name not in available:
            raise ProtocolError(f"output '{name}' is not one of the model's outputs ({', '.join(available)})")
        chosen.append((name, bool(_params(spec, f"output '{name}'").get("binary_data", binary_default))))
    return chosen


def encode_response(out: pa.RecordBatch, chosen: list[tuple[str, bool]], *, model_name: str,
                    request_id: Any) -> tuple[dict[str, Any], list[bytes]]:
    """The response JSON, and the binary blobs that follow it (outputs asked for as binary)."""
    outputs, blobs = [], []
    for name, binary in chosen:
        datatype, shape, flat = output_tensor(out.column(name))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = tensor_bytes(flat, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = flat.to_pylist()
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    return response, blobs


def output_tensor(column: pa.Array) -> tuple[str, list[int], pa.Array]:
    """An output column as a tensor: its datatype, shape ([N] or [N, K]) and flat values."""
    datatype = datatype_of(column.type)
    vector = pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
    flat = column.flatten() if vector else column
    shape = [len(column), len(flat) // len(column) if len(column) else 0] if vector else [len(column)]
    return datatype, shape, flat


def tensor_bytes(flat: pa.Array, datatype: str) -> bytes:
    """A tensor's values in the binary layout: little-endian, each BYTES element after its length."""
    values = flat.to_numpy(zero_copy_only=False)
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in (str(x).encode() for x in values))
    return np.ascontiguousarray(values.astype(np.dtype(DATATYPES[datatype]).newbyteorder("<"), copy=False)).tobytes()
