"""``POST /v2/models/{name}/infer`` as a pure-ASGI handler, in front of Starlette.

The infer route is the one every caller of a model takes, so its fixed cost per request is the
server's: Starlette's routing, Request object, exception-handling wrappers and JSONResponse cost
more than decoding a one-row tensor does. This handler reads the body itself, decodes it with the
v2 codec, calls the model's data plane and writes the answer with orjson, giving the same
answers, status codes, headers and metrics as the app's other endpoints (``failure`` maps
exceptions to codes for both). Any other request goes on to the app.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InputError, LakeinferError
from .dataplane import DataPlane, Overloaded, UnknownModel
from .v2 import HEADER_LENGTH, ProtocolError, decode_request, encode_response, requested_outputs

__all__ = ["InferFirst", "InferRoute", "KEY_MESSAGE", "HTTPFailure", "failure", "infer_target", "keyed"]

log = logging.getLogger("lakeinfer.serve")
KEY_MESSAGE = "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"
_JSON = b"application/json"
_HEADER_LENGTH = HEADER_LENGTH.encode()


class HTTPFailure(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def failure(exc: Exception, timeout_ms: float) -> tuple[int, str, dict[str, str]]:
    """The status, message and headers of a failed request: the one place exceptions become codes."""
    if isinstance(exc, HTTPFailure):
        return exc.status, str(exc), exc.headers
    if isinstance(exc, UnknownModel):
        return 404, str(exc), {}
    if isinstance(exc, Overloaded):
        return 503, str(exc), {"Retry-After": "1"}
    if isinstance(exc, TimeoutError):
        return 504, f"no answer within the {timeout_ms:g} ms timeout", {}
    if isinstance(exc, InputError):
        return 400, str(exc), {}
    if isinstance(exc, LakeinferError):
        return 500, str(exc), {}
    raise exc


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


def keyed(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    """Whether the headers carry the API key, as ``Authorization: Bearer KEY`` (first) or ``X-API-Key``."""
    given = b""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
            break
        if name == b"x-api-key" and not given:
            given = value
    return bool(given) and hmac.compare_digest(given, key)


class InferRoute:
    """The ASGI app of the infer route (``POST /v2/models/{name}[/versions/{v}]/infer``)."""

    def __init__(self, *, plane: DataPlane, api_key: str | None, worker: str,
                 timeout_ms: float, max_body_bytes: int) -> None:
        self.plane = plane
        self.api_key = api_key.encode() if api_key else None
        self.worker = worker.encode()
        self.timeout_ms = timeout_ms
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        params = scope.get("path_params")
        name = params["name"] if params else (infer_target(scope["path"]) or ("", ""))[0]
        label = name if name in self.plane.models else ""  # a label per served model, not per name asked
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            if self.api_key is not None and not keyed(headers, self.api_key):
                raise HTTPFailure(401, KEY_MESSAGE, {"WWW-Authenticate": "Bearer"})
            status, body, extra = await self._infer(name, headers, receive)
        except Exception as exc:
            try:
                status, message, more = failure(exc, self.timeout_ms)
            except Exception:  # a bug: the reason, logged with its traceback, not sent
                log.exception("lakeinfer: unexpected error on %s", scope["path"])
                status, message, more = 500, f"internal error ({type(exc).__name__})", {}
            body = orjson.dumps({"error": message})
            extra = [(b"content-type", _JSON), *((k.lower().encode(), v.encode()) for k, v in more.items())]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *extra,
                                (b"x-lakeinfer-worker", self.worker)]})
        await send({"type": "http.response.body", "body": body})
        metrics = self.plane.metrics
        if status >= 400:
            metrics.error(str(status), label)
        metrics.request("infer", status, time.perf_counter() - start, label)

    async def _infer(self, name: str, headers: list[tuple[bytes, bytes]],
                     receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        model = self.plane.model(name)
        model.admit()
        body, header_length = await self._body(headers, receive)
        batch, payload = decode_request(body, header_length, model.features, model.tensor_input)
        chosen = requested_outputs(payload, model.output_schema.names)
        out = await model.infer(batch, self.timeout_ms / 1000.0)
        response, blobs = encode_response(out, chosen, model_name=model.name, request_id=payload.get("id"))
        head = _dumps(response)
        if not blobs:
            return 200, head, [(b"content-type", _JSON)]
        return 200, head + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                             (b"inference-header-content-length", str(len(head)).encode())]

    async def _body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> tuple[bytes, int | None]:
        """The request body, within the size limit, and the binary extension's JSON length."""
        limit = self.max_body_bytes
        raw_length: bytes | None = None
        for key, value in headers:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise HTTPFailure(413, f"the request body of {int(value):,} bytes is over the {limit:,}-byte limit")
            if key == _HEADER_LENGTH:
                raw_length = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                raise HTTPFailure(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise HTTPFailure(413, f"the request body is over the {limit:,}-byte limit")
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


def _dumps(response: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(response)
    except TypeError:  # a request id orjson cannot write (an integer past 64 bits): the standard library can
        import json

        return json.dumps(response, separators=(",", ":")).encode()
