"""The 503 of a full queue, answered before Starlette sees the request, and Retry-After kept.

Under overload most requests are refused, and every refusal is event-loop time taken from the
requests that are served. This pure-ASGI middleware, the app's outermost but for Starlette's own
error guard, refuses an infer or predict request whose model's queue is full with a body and
headers encoded once per model: no Request object, no routing, no JSON encoding, and the body is
never read (uvicorn discards it as it arrives, so a kept-alive connection stays usable).
Everything else, and a request with a missing or wrong API key (401 comes first), goes on to the app.

A refusal is at once, so a load balancer can try another server, and says Retry-After: the
retry window (``ServeConfig.retry_s``: a second, or half the timeout if that is less), in whole seconds. A
caller that sends its next request on the same connection sooner, ignoring that, is not refused
at once again (a refusal at once, retried at once, is a loop that keeps the server answering
503s at full speed while the model waits for work): its request waits, body unread, in line for
room in the queue, up to the Retry-After, and is served if room comes in that time, else
refused. The connection stays in line so for as long as it keeps coming back sooner than the
Retry-After; a caller that waits as told is answered at once again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import LakeinferError
from ..runtime.batcher import Overloaded
from .dataplane import DataPlane, ModelPlane
from .rest_infer import given_key, infer_target

__all__ = ["Shedder"]

# connections remembered with the end of their Retry-After: past this many, the ended are forgotten
_REMEMBERED = 4096


class Shedder:
    def __init__(self, app: ASGIApp, plane: DataPlane, worker: str) -> None:
        self.app = app
        self.envelope = plane.envelope
        # the retry window: a refused caller that comes back sooner waits in line up to it
        self.retry = plane.envelope.retry_s
        # (client host, port): one connection; the time its Retry-After ends, after a refusal
        self._refused: dict[Any, float] = {}
        self.plane = plane
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
            # the request path's own answer to a full queue (its status and Retry-After), encoded once
            failed = self.envelope.failure(Overloaded(f"{limit} requests are waiting (max_queue={limit})"), "shed")
            body = json.dumps({"error": failed.message}).encode()
            start = {"type": "http.response.start", "status": failed.status,
                     "headers": [(b"content-length", str(len(body)).encode()),
                                 (b"content-type", b"application/json"),
                                 *((k.lower().encode(), v.encode()) for k, v in failed.headers.items()),
                                 (b"x-lakeinfer-worker", self.worker)]}
            answer = self._answers[model.name] = (start, {"type": "http.response.body", "body": body})
        return answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = self._target(scope["path"])
            if target is not None:
                model, endpoint = target
                batcher = model.batcher
                if (batcher is not None and (batcher.depth >= batcher.max_queue or batcher.waiting)
                        and self._keyed(scope["headers"])):
                    began = time.perf_counter()
                    if await self._let_in(batcher, scope.get("client")):
                        await self.app(scope, receive, send)
                        return
                    start, body = self._answer(model)
                    await send(start)
                    await send(body)
                    self.plane.metrics.shed(endpoint, model.name, time.perf_counter() - began)
                    return
        await self.app(scope, receive, send)

    def _keyed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request may be answered here: a request without the key goes on to be
        refused 401 by the request path, not 503."""
        try:
            self.envelope.check_key(given_key(headers), "")
        except LakeinferError:
            return False
        return True

    async def _let_in(self, batcher: Any, client: Any) -> bool:
        """Whether a request to a full queue goes on: only one of a connection that was refused
        and came back before its Retry-After was over, for which room comes in line in time."""
        until = self._refused.get(client) if client else None
        if until is not None and until > time.monotonic():
            # back too soon: in line, up to the Retry-After, and the connection stays in line
            # for as long as it keeps coming back sooner than that
            if await batcher.room(self.retry):
                self._refused[client] = time.monotonic() + self.retry
                return True
        return self._refuse(client)

    def _refuse(self, client: Any) -> bool:
        """Remember when the refused connection's Retry-After ends; False."""
        if client:
            now = time.monotonic()
            if len(self._refused) >= _REMEMBERED:
                self._refused = {c: t for c, t in self._refused.items() if t > now}
            self._refused[client] = now + self.retry
        return False
