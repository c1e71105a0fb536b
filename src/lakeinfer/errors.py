"""The exceptions lakeinfer raises.

Every error a user can cause derives from :class:`LakeinferError`; transports
(CLI, HTTP, Kafka) translate them at their own boundary::

    LakeinferError
    ├── ConfigError            bad options, bad job spec, missing optional extra
    │   └── MissingExtraError  an optional backend is not installed
    ├── ModelLoadError         the model file is missing, unreadable or of another flavor
    │   └── UntrustedModelError  a pickle-based model without trust=True
    ├── InputError             the data cannot be read or does not fit the model
    │   ├── SchemaError        a missing column, a wrong dtype or shape
    │   ├── BadRecordError     one row cannot be scored (a value the model cannot take)
    │   └── RecordsError       JSON records whose fields do not fit the model's columns
    ├── OutputError            the output location cannot be written or holds another job
    └── PredictionError        the model itself failed on a batch
        └── WorkerLostError    a process scoring for the model ended (a stage died)

Each class carries ``status``, the kind of answer a server gives it (``invalid``: 400 /
INVALID_ARGUMENT; ``internal``: 500 / INTERNAL; the server's own errors add others), mapped to
HTTP and gRPC by one table, :data:`lakeinfer.serve.envelope.STATUS`.

Errors cross process and Spark boundaries as data, in one wire format (:func:`to_wire`,
:func:`from_wire`): the class name, the message, and the column and row where there are some.
"""

from __future__ import annotations

import json
from typing import Any


class LakeinferError(Exception):
    """Base of every error lakeinfer raises on purpose."""

    # how a server answers it: a kind that lakeinfer.serve.envelope.STATUS maps to HTTP and gRPC
    status = "internal"


class ConfigError(LakeinferError):
    """Options or a job spec that cannot work."""


class MissingExtraError(ConfigError, ImportError):
    """An optional backend is not installed; the message names the extra."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{module}' package: pip install 'lakeinfer[{extra}]'"
        )
        self.module = module
        self.extra = extra


class ModelLoadError(LakeinferError):
    """The model cannot be loaded."""


class UntrustedModelError(ModelLoadError):
    """A model format that runs code on load was given without trust."""


class InputError(LakeinferError):
    """Input data that cannot be read or scored."""

    status = "invalid"


class SchemaError(InputError):
    """A column is missing or has a type the model cannot take."""


class BadRecordError(InputError):
    """A row that cannot be scored under ``on_error='fail'``: ``reason`` says why, without the row."""

    def __init__(self, message: str, *, column: str, row: int, reason: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row
        self.reason = reason or message


class RecordsError(InputError):
    """JSON records that cannot become columns; the message names the record and the field."""


class OutputError(LakeinferError):
    """The output location cannot be written, or belongs to another job."""


class PredictionError(LakeinferError):
    """The model raised while predicting a batch."""


class WorkerLostError(PredictionError):
    """A process or actor that scores for the model ended while it was in use (a stage of a staged
    model): no record's fault, so the work is redone or the command stops; never a dead letter."""

    status = "unavailable"


WIRE_MARK = "lakeinfer-error:"


def to_wire(exc: BaseException) -> dict[str, Any]:
    """``exc`` as plain data that pickles and serialises to JSON: class, message, column, row."""
    if isinstance(exc, LakeinferError):
        kind, message = type(exc).__name__, str(exc)
    else:  # a bug or an environment failure: keep the real reason
        kind, message = "LakeinferError", f"{type(exc).__name__}: {exc}"
    wire: dict[str, Any] = {"class": kind, "message": message}
    if isinstance(exc, BadRecordError):
        wire.update(column=exc.column, row=exc.row, reason=exc.reason)
    return wire


def from_wire(wire: dict[str, Any]) -> LakeinferError:
    """The error :func:`to_wire` described, as the same class where lakeinfer has it."""
    cls = globals().get(str(wire.get("class")), LakeinferError)
    message = str(wire.get("message", ""))
    if not (isinstance(cls, type) and issubclass(cls, LakeinferError)) or cls is MissingExtraError:
        cls = LakeinferError
    if cls is BadRecordError:
        return BadRecordError(message, column=str(wire.get("column")), row=int(wire.get("row", -1)),
                              reason=wire.get("reason"))
    error: LakeinferError = cls(message)
    return error


def wire_text(exc: BaseException) -> str:
    """One line carrying the wire format inside another system's error text (a Spark task's)."""
    return WIRE_MARK + json.dumps(to_wire(exc))


def find_wire(text: str) -> LakeinferError | None:
    """The error :func:`wire_text` put inside ``text``, if any."""
    start = text.find(WIRE_MARK)
    if start < 0:
        return None
    try:
        wire, _ = json.JSONDecoder().raw_decode(text, start + len(WIRE_MARK))
    except ValueError:
        return None
    return from_wire(wire) if isinstance(wire, dict) else None


def require(module: str, extra: str, purpose: str):  # type: ignore[no-untyped-def]
    """Import an optional backend or raise :class:`MissingExtraError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, purpose) from exc
