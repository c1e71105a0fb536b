"""``POST /v2/models/{name}/infer`` as a pure-ASGI handler, in front of Starlette.

The infer route is the one every caller of a model takes, so its fixed cost per request is the
server's: Starlette's routing, Request object, exception-handling wrappers and JSONResponse cost
more than decoding a one-row tensor does. This handler reads the body itself, decodes it with the
v2 codec, calls the model's data plane and writes the answer with orjson, giving the same
answers, status codes, headers and metrics as the app's other endpoints (all take the data
plane's :class:`~lakeinfer.serve.envelope.Envelope`). Any other request goes on to the app.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pyarrow as pa
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InputError
from .dataplane import DataPlane
from .envelope import STATUS, Answered, Scored
from .v2 import HEADER_LENGTH, ProtocolError, decode_request, encode_response, requested_outputs

__all__ = ["KEY_HOW", "InferFirst", "InferRoute", "given_key", "infer_target"]

KEY_HOW = "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
STATUS_CODE = {status: code for status, code in STATUS.values()}  # an HTTP status's gRPC code name
_JSON = b"application/json"
_HEADER_LENGTH = HEADER_LENGTH.encode()


def infer_target(path: str) -> tuple[str, str] | None:
    """(model name, endpoint) of an infer or predict path as the app's routes name them, else None."""
    parts = path.split("/")
    n = len(parts)
    if n == 5 and parts[2] == "models" and (parts[1] == "v2" and parts[4] == "infer"
                                            or parts[1] == "v1" and parts[4] == "predict"):
        return parts[3], parts[4]
    if n == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions" and parts[6] == "infer":
        return parts[3], "infer"
    return None


def given_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The API key the headers carry, as ``Authorization: Bearer KEY`` (first) or ``X-API-Key``."""
    given = b""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key" and not given:
            given = value
    return given


class InferRoute:
    """The ASGI app of the infer route (``POST /v2/models/{name}[/versions/{v}]/infer``)."""

    def __init__(self, *, plane: DataPlane, worker: str, timeout_ms: float) -> None:
        self.plane = plane
        self.envelope = plane.envelope
        self.worker = worker.encode()
        self.timeout_ms = timeout_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        params = scope.get("path_params")
        name = params["name"] if params else (infer_target(scope["path"]) or ("", ""))[0]
        label = name if name in self.plane.models else ""  # a label per served model, not per name asked
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        exchange = _Exchange()
        try:
            if self.envelope.keyed:
                self.envelope.check_key(given_key(headers), KEY_HOW)
            status, body, extra = await self._infer(name, headers, receive, exchange, start)
        except Exception as exc:
            failed = self.envelope.failure(exc, scope["path"])
            status = failed.status
            body = orjson.dumps({"error": failed.message})
            extra = [(b"content-type", _JSON), *((k.lower().encode(), v.encode()) for k, v in failed.headers.items())]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *extra,
                                (b"x-lakeinfer-worker", self.worker)]})
        await send({"type": "http.response.body", "body": body})
        self.envelope.answered(Answered("rest", "infer", label, status, "OK" if status < 400 else STATUS_CODE[status],
                                        time.perf_counter() - start, exchange.inputs, exchange.outputs,
                                        exchange.request_id))

    async def _infer(self, name: str, headers: list[tuple[bytes, bytes]], receive: Receive,
                     exchange: _Exchange, start: float) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        model = self.plane.model(name)
        model.admit()
        body, header_length = await self._body(headers, receive)
        batch, payload = decode_request(body, header_length, model.features, model.tensor_input)
        chosen = requested_outputs(payload, model.output_schema.names)
        out = await model.infer(batch, self.timeout_ms / 1000.0)
        request_id = payload.get("id")
        if request_id is None and self.envelope.recorders:
            request_id = self.envelope.new_id(None)
        exchange.inputs, exchange.outputs = batch, out
        exchange.request_id = None if request_id is None else str(request_id)
        if self.envelope.recorders:  # before the answer is encoded and sent
            await self.envelope.before_answer(Scored("rest", "infer", model.name, exchange.request_id, start, batch, out))
        response, blobs = encode_response(out, chosen, model_name=model.name, request_id=request_id)
        head = _dumps(response)
        if not blobs:
            return 200, head, [(b"content-type", _JSON)]
        return 200, head + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                             (b"inference-header-content-length", str(len(head)).encode())]

    async def _body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> tuple[bytes, int | None]:
        """The request body, within the size limit, and the binary extension's JSON length."""
        raw_length: bytes | None = None
        for key, value in headers:
            if key == b"content-length" and value.isdigit():
                self.envelope.check_size(int(value), declared=True)
            if key == _HEADER_LENGTH:
                raw_length = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                raise InputError("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                self.envelope.check_size(size)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if raw_length is None:
            return body, None
        text = raw_length.decode("latin-1")
        if not text.isdigit() or int(text) > len(body):
            raise ProtocolError(f"header Inference-Header-Content-Length: {text!r} does not fit a {len(body)}-byte body")
        return body, int(text)


class InferFirst:
    """Middleware: infer requests straight to ``route``, before Starlette's routing; the rest to ``app``."""

    def __init__(self, app: ASGIApp, route: InferRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None and target[1] == "infer":
                await self.route(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Exchange:
    """What a request scored, for the envelope's hooks."""

    __slots__ = ("inputs", "outputs", "request_id")

    def __init__(self) -> None:
        self.inputs: pa.RecordBatch | None = None
        self.outputs: pa.RecordBatch | None = None
        self.request_id: str | None = None


def _dumps(response: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(response)
    except TypeError:  # a request id orjson cannot write (an integer past 64 bits): the standard library can
        import json

        return json.dumps(response, separators=(",", ":")).encode()
