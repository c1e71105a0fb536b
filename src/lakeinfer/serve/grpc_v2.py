"""The Open Inference Protocol (KServe v2) over gRPC: service ``inference.GRPCInferenceService``.

Each worker process runs it on the event loop of its REST app, over the same data plane; the
workers share the port (SO_REUSEPORT), as they share the REST one. The codec from a
ModelInferRequest to an Arrow record batch and from the outputs back to a ModelInferResponse
reuses v2.py's tensor rules; every call takes the data plane's request path (envelope.py), whose
one table gives each error its HTTP status and its gRPC code.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from ..errors import LakeinferError
from . import proto, v2
from .config import ServeConfig
from .dataplane import DataPlane, ModelPlane
from .envelope import Answered, Scored
from .v2 import DATATYPES, ProtocolError

log = logging.getLogger("lakeinfer.serve")

__all__ = ["GrpcServer", "decode_infer", "encode_infer"]

WORKER_METADATA = "x-lakeinfer-worker"

# the typed field of InferTensorContents for each datatype (FP16 has none: raw contents only)
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def decode_infer(request: Any, features: Sequence[str], tensor: tuple[str, int] | None = None) -> pa.RecordBatch:
    """A ModelInferRequest's rows as a record batch (inputs as v2.decode_request reads them)."""
    inputs = request.inputs
    if not inputs:
        raise ProtocolError("request: 'inputs' is empty")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(inputs):
        raise ProtocolError(f"request: {len(raw)} raw_input_contents for {len(inputs)} inputs (one each, in order)")

    def tensors() -> Iterator[tuple[str, np.ndarray, list[int]]]:
        for i, spec in enumerate(inputs):
            yield _tensor(spec, i, raw[i] if raw else None)

    return v2.to_batch(tensors(), features, tensor)


def _tensor(spec: Any, index: int, raw: bytes | None) -> tuple[str, np.ndarray, list[int]]:
    if not spec.name:
        raise ProtocolError(f"inputs[{index}]: missing field 'name'")
    where = f"input '{spec.name}'"
    shape = list(spec.shape)
    if not shape or any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape must be a non-empty list of non-negative integers, not {shape}")
    datatype = spec.datatype
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: unknown datatype '{datatype}' (one of {', '.join(DATATYPES)})")
    count = math.prod(shape)
    source = ""
    if raw is not None:
        if datatype == "BYTES":
            values = np.array(v2.bytes_elements(raw, where), dtype=object)
        else:
            dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
            if len(raw) != count * dtype.itemsize:
                raise ProtocolError(f"{where}: {len(raw)} bytes of raw_input_contents for shape {shape} of {datatype}")
            values = np.frombuffer(raw, dtype=dtype)
    else:
        field = CONTENTS.get(datatype)
        if field is None:
            raise ProtocolError(f"{where}: {datatype} data must come in raw_input_contents")
        source = f" in contents.{field}"
        data = getattr(spec.contents, field)
        try:
            values = (np.array([b.decode("utf-8", "replace") for b in data], dtype=object) if datatype == "BYTES"
                      else np.array(data, dtype=DATATYPES[datatype]))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"{where}: data do not match datatype {datatype} ({exc})") from None
    if values.size != count:
        raise ProtocolError(f"{where}: shape {shape} needs {count} values, got {values.size}{source}")
    return spec.name, values, shape


def encode_infer(out: pa.RecordBatch, names: Sequence[str], *, model_name: str, request_id: str) -> Any:
    """The outputs as a ModelInferResponse, their values in raw_output_contents (as Triton sends them)."""
    response = proto.ModelInferResponse(model_name=model_name, model_version="1", id=request_id)
    for name in names:
        datatype, shape, flat = v2.output_tensor(out.column(name))
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(v2.tensor_bytes(flat, datatype))
    return response


def requested(request: Any, available: Sequence[str]) -> list[str]:
    """The outputs to send: those asked for (each checked, as REST checks them), else all."""
    asked = {"outputs": [{"name": o.name} for o in request.outputs]} if request.outputs else {}
    return [name for name, _ in v2.requested_outputs(asked, available)]


Handler = Callable[[Any, grpc.aio.ServicerContext, dict[str, Any]], Awaitable[Any]]
Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
KEY_HOW = "metadata 'authorization: Bearer KEY' or 'x-api-key: KEY'"


def _given_key(context: grpc.aio.ServicerContext) -> str:
    """The API key the call's metadata carries (``authorization: Bearer KEY`` first, else ``x-api-key``)."""
    headers = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or ""


class GrpcServer:
    """The gRPC service of one worker process, bound to ``config.grpc_port``."""

    def __init__(self, plane: DataPlane, config: ServeConfig) -> None:
        self.plane = plane
        self.envelope = plane.envelope
        self.config = config
        self.timeout = config.timeout_ms / 1000.0
        self.worker = str(os.getpid())
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        assert self.config.grpc_port is not None
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),  # every worker process binds the port; the kernel spreads connections
            ("grpc.max_receive_message_length", self.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ])
        handlers = {
            "ServerLive": self._method("live", self.server_live, public=True),
            "ServerReady": self._method("ready", self.server_ready, public=True),
            "ModelReady": self._method("model_ready", self.model_ready),
            "ServerMetadata": self._method("server_metadata", self.server_metadata),
            "ModelMetadata": self._method("model_metadata", self.model_metadata),
            "ModelInfer": self._method("infer", self.model_infer),
        }
        rpcs = {name: grpc.unary_unary_rpc_method_handler(
                    handler, request_deserializer=proto.METHODS[name][0].FromString,
                    response_serializer=proto.METHODS[name][1].SerializeToString)
                for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(proto.SERVICE, rpcs),))
        host = self.config.host
        address = f"[{host}]:{self.config.grpc_port}" if ":" in host else f"{host}:{self.config.grpc_port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's words for a port it cannot bind
            raise LakeinferError(f"cannot serve gRPC on {address}: {exc}") from None
        if not bound:
            raise LakeinferError(f"cannot serve gRPC on {address}")
        await server.start()
        self.server = server

    async def stop(self, grace: float) -> None:
        """Refuse new calls and let those in flight finish (within ``grace`` seconds)."""
        if self.server is not None:
            await self.server.stop(grace)

    def _method(self, label: str, handler: Handler, *, public: bool = False) -> Method:
        """The request path around a handler: auth, error mapping, metrics and hooks, as REST's."""
        envelope = self.envelope

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            name = getattr(request, "model_name", None) or getattr(request, "name", "")
            model = name if name in self.plane.models else ""  # a label per served model, not per name asked
            context.set_trailing_metadata(((WORKER_METADATA, self.worker),))
            exchange: dict[str, Any] = {"start": start}
            failed = None
            try:
                if envelope.keyed and not public:
                    envelope.check_key(_given_key(context), KEY_HOW)
                response = await handler(request, context, exchange)
            except Exception as exc:
                failed = envelope.failure(exc, f"gRPC {label}")
            status, code = (failed.status, failed.code) if failed else (200, "OK")
            envelope.answered(Answered("grpc", label, model, status, code, time.perf_counter() - start,
                                       exchange.get("inputs"), exchange.get("outputs"), exchange.get("request_id")))
            if failed:
                await context.abort(getattr(grpc.StatusCode, failed.code), failed.message)
            return response

        return run


    async def server_live(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        return proto.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        return proto.ServerReadyResponse(ready=self.plane.ready())

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        return proto.ModelReadyResponse(ready=self.plane.model(request.name).ready())

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        meta = v2.server_metadata()
        return proto.ServerMetadataResponse(name=meta["name"], version=meta["version"])

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        plane = self.plane.model(request.name)
        if not plane.loaded:
            raise plane.not_loaded()
        meta = v2.model_metadata(plane.name, plane.flavor, plane.input_schema, plane.output_schema,
                                 plane.tensor_input)
        return proto.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                           inputs=meta["inputs"], outputs=meta["outputs"])

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext, exchange: dict[str, Any]) -> Any:
        plane: ModelPlane = self.plane.model(request.model_name)
        plane.admit()  # before the codec, which needs the model's features and outputs: a full queue's
        # UNAVAILABLE costs no decoding
        batch = decode_infer(request, plane.features, plane.tensor_input)
        names = requested(request, plane.output_schema.names)
        remaining = context.time_remaining()
        timeout = self.timeout if remaining is None else min(self.timeout, remaining)
        out = await plane.infer(batch, timeout)
        request_id = request.id or self.envelope.new_id(None) or ""
        exchange.update(inputs=batch, outputs=out, request_id=request_id or None)
        if self.envelope.recorders:  # before the answer is encoded and sent
            await self.envelope.before_answer(Scored("grpc", "infer", plane.name, request_id or None, exchange["start"],
                                                     batch, out))
        return encode_infer(out, names, model_name=plane.name, request_id=request_id)
