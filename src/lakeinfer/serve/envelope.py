"""One request path for every transport (REST infer, the records endpoint, the other REST
endpoints, gRPC): the API key, the body limit, errors to status codes, metrics, and the hook point
where cross-cutting work attaches (every answered request passes :meth:`Envelope.answered`;
every scored request passes :meth:`Envelope.before_answer` before its answer is encoded and sent,
where a recorder such as the prediction ledger keeps its rows).

An error's status lives on the error (``status``, a kind); :data:`STATUS` is the one table that
maps each kind to its HTTP status and its gRPC code.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from ..errors import InputError, LakeinferError

if TYPE_CHECKING:
    from .config import ServeConfig
    from .metrics import Metrics

__all__ = ["STATUS", "Answered", "BodyTooLarge", "Envelope", "Failure", "Hook", "ModelUnavailable", "Recorder",
           "Scored", "Unauthorized", "UnknownModel"]

log = logging.getLogger("lakeinfer.serve")

# error kind -> (HTTP status, gRPC status code name)
STATUS: MappingProxyType[str, tuple[int, str]] = MappingProxyType({
    "invalid": (400, "INVALID_ARGUMENT"),
    "unauthenticated": (401, "UNAUTHENTICATED"),
    "not_found": (404, "NOT_FOUND"),
    "too_large": (413, "RESOURCE_EXHAUSTED"),
    "internal": (500, "INTERNAL"),
    "unavailable": (503, "UNAVAILABLE"),
    "deadline": (504, "DEADLINE_EXCEEDED"),
})


class Unauthorized(LakeinferError):
    """A missing or wrong API key."""

    status = "unauthenticated"


class BodyTooLarge(InputError):
    """A request body over ``max_body_bytes``."""

    status = "too_large"


class UnknownModel(LakeinferError):
    """A name that is none of the server's models."""

    status = "not_found"


class ModelUnavailable(LakeinferError):
    """A model that is still loading, or did not load."""

    status = "unavailable"


@dataclass(frozen=True)
class Failure:
    """A failed request as a transport answers it."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answered:
    """What a hook sees of every answered request."""

    transport: str  # "rest" or "grpc"
    endpoint: str  # "infer", "predict", "model_metadata", ...
    model: str  # the served model's name, "" for a server endpoint or an unknown name
    status: int  # the HTTP status (for gRPC, its code's HTTP counterpart in STATUS; 200 for OK)
    code: str  # the gRPC code name ("OK" for a success)
    seconds: float
    inputs: pa.RecordBatch | None = None  # the rows scored, for an infer or predict request
    outputs: pa.RecordBatch | None = None  # their outputs, as answered
    request_id: str | None = None


Hook = Callable[[Answered], None]


@dataclass(frozen=True)
class Scored:
    """A request scored and not yet answered, as a recorder sees it."""

    transport: str  # "rest" or "grpc"
    endpoint: str  # "infer" or "predict"
    model: str
    request_id: str | None
    started: float  # time.perf_counter() when the request arrived
    inputs: pa.RecordBatch
    outputs: pa.RecordBatch


class Recorder(Protocol):
    """What must hold a scored request before it is answered (the prediction ledger): a
    recorder that raises fails the request (its status, e.g. a 503), and no answer is sent."""

    assigns_ids: bool  # requests without an id get one (returned in the answer)

    def new_id(self) -> str: ...

    async def before_answer(self, scored: Scored) -> None: ...

    def ready(self) -> bool: ...

    def metrics_text(self) -> bytes: ...

    def close(self) -> None: ...


class Envelope:
    """The request path's shared part, one per worker process; transports call it."""

    def __init__(self, config: ServeConfig, metrics: Metrics, api_key: str | None) -> None:
        self.timeout_ms = config.timeout_ms
        self.max_body_bytes = config.max_body_bytes
        self.retry_s = config.retry_s
        self.metrics = metrics
        self._key = api_key.encode() if api_key else None
        self.hooks: list[Hook] = []
        self.recorders: list[Recorder] = []

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def check_key(self, given: bytes | str | None, how: str) -> None:
        """Raise :class:`Unauthorized` unless ``given`` is the key; ``how``: how to send it."""
        if self._key is None:
            return
        raw = given.encode() if isinstance(given, str) else given or b""
        if not raw or not hmac.compare_digest(raw, self._key):
            raise Unauthorized(f"missing or wrong API key (send {how})")

    def check_size(self, size: int, *, declared: bool = False) -> None:
        """Raise :class:`BodyTooLarge` for a body (``declared``: a Content-Length) over the limit."""
        limit = self.max_body_bytes
        if size > limit:
            shown = f"of {size:,} bytes " if declared else ""
            raise BodyTooLarge(f"the request body {shown}is over the {limit:,}-byte limit")

    @property
    def retry_after(self) -> str:
        """The Retry-After header of a 503: the retry window, in whole seconds as HTTP has them."""
        return str(max(1, math.ceil(self.retry_s)))

    def failure(self, exc: BaseException, where: str) -> Failure:
        """How ``exc`` is answered; a bug is logged with its traceback and answered 500 without it."""
        if isinstance(exc, TimeoutError):
            kind, message = "deadline", f"no answer within the {self.timeout_ms:g} ms timeout"
        elif isinstance(exc, LakeinferError):
            kind, message = exc.status, str(exc)
        else:
            log.error("lakeinfer: unexpected error on %s", where, exc_info=exc)
            kind, message = "internal", f"internal error ({type(exc).__name__})"
        status, code = STATUS[kind]
        headers = {}
        if kind == "unavailable":
            headers["Retry-After"] = self.retry_after
        elif kind == "unauthenticated":
            headers["WWW-Authenticate"] = "Bearer"
        return Failure(status, code, message, headers)

    def new_id(self, given: str | None) -> str | None:
        """A request's id: ``given``, else one a recorder assigns (None when none needs one)."""
        if given or not self.recorders:
            return given
        return next((r.new_id() for r in self.recorders if r.assigns_ids), None)

    async def before_answer(self, scored: Scored) -> None:
        """A scored request, before its answer is encoded and sent: each recorder keeps it."""
        for recorder in self.recorders:
            await recorder.before_answer(scored)

    def ready(self) -> bool:
        """Whether every recorder can take requests (part of the server's readiness)."""
        return all(recorder.ready() for recorder in self.recorders)

    def metrics_text(self) -> bytes:
        """The recorders' own lines for ``/metrics``."""
        return b"".join(recorder.metrics_text() for recorder in self.recorders)

    def close(self) -> None:
        for recorder in self.recorders:
            recorder.close()

    def answered(self, answer: Answered) -> None:
        """Every answered request: its metrics, then each hook (a failing hook is logged, never the
        request's failure: the answer has gone)."""
        if answer.transport == "grpc":
            endpoint, status = f"grpc_{answer.endpoint}", answer.code
            error = f"grpc_{answer.code}" if answer.code != "OK" else None
        else:
            endpoint, status = answer.endpoint, str(answer.status)
            error = status if answer.status >= 400 else None
        if error is not None:
            self.metrics.error(error, answer.model)
        self.metrics.request(endpoint, status, answer.seconds, answer.model)
        for hook in self.hooks:
            try:
                hook(answer)
            except Exception:
                log.exception("lakeinfer: a request hook failed")
