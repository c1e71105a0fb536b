"""The 503 of a full queue, answered before Starlette sees the request.

Under overload most requests are refused, and every refusal is event-loop time taken from the
requests that are served. This pure-ASGI middleware, the app's outermost but for Starlette's own
error guard, refuses an infer or predict request whose model's queue is full with a body and
headers encoded once per model: no Request object, no routing, no JSON encoding, and the body is
never read (uvicorn discards it as it arrives, so a kept-alive connection stays usable).
Everything else, and a request with a missing or wrong API key (401 comes first), goes on to the app.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .dataplane import DataPlane, ModelPlane
from .rest_infer import infer_target, keyed

__all__ = ["Shedder"]


class Shedder:
    def __init__(self, app: ASGIApp, plane: DataPlane, api_key: str | None, worker: str) -> None:
        self.app = app
        self.plane = plane
        self.api_key = api_key.encode() if api_key else None
        self.worker = worker.encode()
        self._answers: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def _target(self, path: str) -> tuple[ModelPlane, str] | None:
        """The model and endpoint of an infer or predict path, as the app's routes name them."""
        target = infer_target(path)
        model = self.plane.models.get(target[0]) if target is not None else None
        return None if model is None or target is None else (model, target[1])

    def _answer(self, model: ModelPlane) -> tuple[dict[str, Any], dict[str, Any]]:
        answer = self._answers.get(model.name)
        if answer is None:
            assert model.batcher is not None
            limit = model.batcher.max_queue
            body = json.dumps({"error": f"{limit} requests are waiting (max_queue={limit})"}).encode()
            start = {"type": "http.response.start", "status": 503,
                     "headers": [(b"content-length", str(len(body)).encode()),
                                 (b"content-type", b"application/json"),
                                 (b"retry-after", b"1"),
                                 (b"x-lakeinfer-worker", self.worker)]}
            answer = self._answers[model.name] = (start, {"type": "http.response.body", "body": body})
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = self._target(scope["path"])
            if target is not None:
                model, endpoint = target
                batcher = model.batcher
                if (batcher is not None and batcher.depth >= batcher.max_queue
                        and (self.api_key is None or keyed(scope["headers"], self.api_key))):
                    began = time.perf_counter()
                    start, body = self._answer(model)
                    await send(start)
                    await send(body)
                    self.plane.metrics.shed(endpoint, model.name, time.perf_counter() - began)
                    return
        await self.app(scope, receive, send)
