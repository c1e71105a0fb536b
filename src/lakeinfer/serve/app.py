"""The ASGI application: Open Inference Protocol v2 REST, a records endpoint, metrics, OpenAPI.

A server holds one model or several, each behind its own batcher, routed by the name in the URL.
Every endpoint takes the data plane's request path (envelope.py: the API key, the body limit,
errors to status codes, metrics, hooks). With --grpc-port the app also runs the v2 gRPC service
(grpc_v2.py) over the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ..runtime import ModelRuntime
from . import v2
from .config import ServeConfig
from .dataplane import DataPlane, ModelPlane
from .envelope import Answered, Envelope, Hook, Scored
from .metrics import CONTENT_TYPE
from .openapi import DOCS_PAGE, openapi_document
from .rest_infer import KEY_HOW, STATUS_CODE, InferFirst, InferRoute, given_key
from .shed import Shedder
from .v2 import ProtocolError

log = logging.getLogger("lakeinfer.serve")
WORKER_HEADER = "X-Lakeinfer-Worker"
NO_FEATURES = "this model names no features: start the server with --features to use the records endpoint"
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(config: ServeConfig, *, runtimes: Mapping[str, ModelRuntime] | None = None,
               hooks: Sequence[Hook] = ()) -> ASGIApp:
    """The app of one worker process; ``runtimes``: models already built, by name (else each loads
    its own); ``hooks``: called with every answered request, REST and gRPC (see envelope.py)."""
    plane = DataPlane(config, runtimes=runtimes, api_key=config.api_key())
    envelope = plane.envelope
    envelope.hooks.extend(hooks)
    if config.ledger is not None:  # the prediction ledger: each scored request's rows kept before it is answered
        from ..ledger.serving import ServeLedger

        envelope.recorders.append(ServeLedger(config, lambda name: plane.model(name).input_schema))
    timeout = config.timeout_ms / 1000.0
    worker = str(os.getpid())
    grpc_server = None
    if config.grpc_port is not None:
        from .grpc_v2 import GrpcServer

        grpc_server = GrpcServer(plane, config)

    # the infer route, the one every model call takes, is plain ASGI (rest_infer.py)
    infer = InferRoute(plane=plane, worker=worker, timeout_ms=config.timeout_ms)

    def endpoint(label: str, *, public: bool = False) -> Callable[[Handler], Handler]:
        """The request path around a handler: auth, error mapping, metrics and hooks."""

        def wrap(handler: Handler) -> Handler:
            async def run(request: Request) -> Response:
                start = time.perf_counter()
                name = request.path_params.get("name", "")
                model = name if name in plane.models else ""  # a label per served model, not per name asked
                exchange: dict[str, Any] = {"start": start}
                request.state.exchange = exchange
                try:
                    if envelope.keyed and not public:
                        envelope.check_key(given_key(request.headers.raw), KEY_HOW)
                    response = await handler(request)
                except Exception as exc:
                    failed = envelope.failure(exc, request.url.path)
                    response = _error(failed.status, failed.message, failed.headers)
                status = response.status_code
                envelope.answered(Answered("rest", label, model, status, "OK" if status < 400 else STATUS_CODE[status],
                                           time.perf_counter() - start, exchange.get("inputs"),
                                           exchange.get("outputs")))
                # which worker process answered: for operators (and tests) of a --workers N server
                response.headers[WORKER_HEADER] = worker
                return response

            return run

        return wrap

    def _model(request: Request) -> ModelPlane:
        return plane.model(request.path_params["name"])

    @endpoint("live", public=True)
    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    @endpoint("ready", public=True)
    async def ready(request: Request) -> Response:
        ok = plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @endpoint("server_metadata")
    async def server_metadata(request: Request) -> Response:
        return JSONResponse(v2.server_metadata())

    @endpoint("model_metadata")
    async def model_metadata(request: Request) -> Response:
        model = _model(request)
        if not model.loaded:
            raise model.not_loaded()
        return JSONResponse(v2.model_metadata(model.name, model.flavor, model.input_schema, model.output_schema,
                                              model.tensor_input))

    @endpoint("model_ready")
    async def model_ready(request: Request) -> Response:
        model = _model(request)
        ok = model.ready()
        return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)

    @endpoint("repository_index")
    async def repository_index(request: Request) -> Response:
        body = await _read_body(request, envelope)
        only_ready = False
        if body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("ready", False), bool):
                raise ProtocolError("the request body must be an object, its optional field 'ready' true or false")
            only_ready = payload.get("ready", False)
        entries = plane.index()
        return JSONResponse([e for e in entries if e["state"] == "READY"] if only_ready else entries)

    @endpoint("predict")
    async def predict(request: Request) -> Response:
        model = _model(request)
        model.admit()
        body = await _read_body(request, envelope)
        batch = _records(body, model)
        out = await model.infer(batch, timeout, rows="instances[{row}]")
        request.state.exchange.update(inputs=batch, outputs=out)
        answer: dict[str, Any] = {"predictions": out.to_pylist()}
        if envelope.recorders:  # before the answer is encoded and sent
            answer["id"] = envelope.new_id(None)
            await envelope.before_answer(Scored("rest", "predict", model.name, answer["id"], request.state.exchange["start"], batch, out))
        return JSONResponse(answer)

    @endpoint("metrics")
    async def metrics(request: Request) -> Response:
        return Response(plane.metrics.render() + envelope.metrics_text(), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(plane.names))

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if grpc_server is not None:  # on this event loop, beside the REST app, from the start (live, not ready)
            await grpc_server.start()
        loading = asyncio.get_running_loop().create_task(plane.load())
        yield
        if grpc_server is not None:  # uvicorn has drained REST; now gRPC's calls in flight
            await grpc_server.stop(config.timeout_ms / 1000.0 + 1)
        await loading
        await plane.close()  # uvicorn has let the requests in flight finish; drain the queue too
        envelope.close()

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.plane = plane
    # in front of Starlette, whose error guard, middleware and routing cost more than a one-row
    # model call: a full queue's line and 503 first (shed.py), then infer requests straight to
    # their route (rest_infer.py), which answers every error itself; the endpoints' admit()
    # stays for the requests that pass the line as the queue fills
    return Shedder(InferFirst(app, infer), plane=plane, worker=worker)


async def _read_body(request: Request, envelope: Envelope) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        envelope.check_size(int(declared), declared=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        envelope.check_size(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _records(body: bytes, plane: ModelPlane) -> pa.RecordBatch:
    """``{"instances": [{column: value, ...}, ...]}`` as a record batch, naming any bad field."""
    if plane.tensor_input is not None:  # its columns are named only inside the server
        raise ProtocolError(NO_FEATURES)
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise ProtocolError("the request body must be an object with a list field 'instances'")
    if not payload["instances"]:
        raise ProtocolError("'instances' is empty")
    if plane.runtime is None:
        raise plane.not_loaded()
    return plane.runtime.records(payload["instances"], where="instances")


def app_from_env() -> ASGIApp:
    """The factory each uvicorn worker process calls."""
    return create_app(ServeConfig.from_env())
