"""The early 503's middleware: which paths it answers for, and the API key checked as the app checks it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from lakeinfer.serve.envelope import Envelope
from lakeinfer.serve.shed import Shedder


def _shedder(depth: int, api_key: str | None = None) -> tuple[Shedder, list[str]]:
    passed: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    async def room(wait: float) -> bool:  # a full queue stays full: the line gives no room
        return depth < 2

    model = SimpleNamespace(name="rf", batcher=SimpleNamespace(depth=depth, max_queue=2, waiting=0, room=room))
    metrics = SimpleNamespace(shed=lambda *args: None)
    config = SimpleNamespace(timeout_ms=20.0, max_body_bytes=1 << 20, retry_s=0.01)
    envelope = Envelope(config, metrics, api_key)  # type: ignore[arg-type]
    plane = SimpleNamespace(models={"rf": model}, metrics=metrics, envelope=envelope)
    return Shedder(app, plane, "7"), passed  # type: ignore[arg-type]


def _call(shedder: Shedder, path: str, headers: list[tuple[bytes, bytes]] | None = None,
          method: str = "POST") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body is never read")

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(shedder(scope, receive, send))
    return sent


def test_full_queue_paths_are_answered_503_others_pass() -> None:
    shedder, passed = _shedder(depth=2)
    for path in ("/v2/models/rf/infer", "/v2/models/rf/versions/1/infer", "/v1/models/rf/predict"):
        sent = _call(shedder, path)
        assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
        assert b"waiting" in sent[1]["body"]
    for path in ("/v2/models/other/infer", "/v1/models/rf/infer", "/v2/models/rf/predict", "/v2/models/rf",
                 "/v2/models/rf/versions/1/ready", "/metrics"):
        assert _call(shedder, path) == []
    assert _call(shedder, "/v2/models/rf/infer", method="GET") == []
    not_full, passed_too = _shedder(depth=1)
    assert _call(not_full, "/v2/models/rf/infer") == [] and passed_too == ["/v2/models/rf/infer"]


def test_a_request_without_the_key_goes_on_to_the_app_for_its_401() -> None:
    shedder, passed = _shedder(depth=2, api_key="s3cret")
    assert _call(shedder, "/v2/models/rf/infer") == []
    assert _call(shedder, "/v2/models/rf/infer", [(b"x-api-key", b"wrong")]) == []
    assert _call(shedder, "/v2/models/rf/infer", [(b"x-api-key", b"s3cret")])[0]["status"] == 503
    assert _call(shedder, "/v2/models/rf/infer", [(b"authorization", b"Bearer s3cret")])[0]["status"] == 503
    assert len(passed) == 2


def test_a_caller_back_before_its_retry_after_waits_in_line() -> None:
    waits: list[float] = []
    room_comes = [True]

    async def room(wait: float) -> bool:
        waits.append(wait)
        return room_comes[0]

    passed: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["client"][1])

    model = SimpleNamespace(name="rf", batcher=SimpleNamespace(depth=2, max_queue=2, waiting=0, room=room))
    metrics = SimpleNamespace(shed=lambda *args: None)
    config = SimpleNamespace(timeout_ms=60_000.0, max_body_bytes=1 << 20, retry_s=30.0)
    plane = SimpleNamespace(models={"rf": model}, metrics=metrics,
                            envelope=Envelope(config, metrics, None))  # type: ignore[arg-type]
    shedder = Shedder(app, plane, "7")  # type: ignore[arg-type]

    def call(port: int) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/rf/infer", "headers": [],
                 "client": ("127.0.0.1", port)}
        asyncio.run(shedder(scope, None, send))  # type: ignore[arg-type]
        return sent

    refused = call(1000)
    assert refused[0]["status"] == 503 and waits == []  # refused at once, a first time
    assert (b"retry-after", b"30") in refused[0]["headers"]  # the header says the window it keeps
    assert call(1000) == [] and passed == [1000]  # back at once: waited in line, and room came
    assert waits[0] == 30.0  # up to the Retry-After
    assert call(1000) == [] and len(waits) == 2  # and again, while it keeps coming back so soon
    assert call(2000)[0]["status"] == 503 and len(waits) == 2  # another connection: at once
    room_comes[0] = False
    assert call(2000)[0]["status"] == 503 and len(waits) == 3  # back at once, in line, no room came


def test_model_threads_leave_a_core_to_each_workers_event_loop() -> None:
    from lakeinfer.cpu import available_cores
    from lakeinfer.serve.dataplane import model_threads

    cores = available_cores()
    assert model_threads(1) == max(1, cores - 1)
    assert model_threads(cores) == 1
    assert model_threads(None) == model_threads(1)
