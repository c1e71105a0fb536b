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
    │   └── BadRecordError     one row cannot be scored (a null in a required feature)
    ├── OutputError            the output location cannot be written or holds another job
    └── PredictionError        the model itself failed on a batch
"""

from __future__ import annotations


class LakeinferError(Exception):
    """Base of every error lakeinfer raises on purpose."""


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


class SchemaError(InputError):
    """A column is missing or has a type the model cannot take."""


class BadRecordError(InputError):
    """A row that cannot be scored under ``on_error='fail'``."""

    def __init__(self, message: str, *, column: str, row: int) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


class OutputError(LakeinferError):
    """The output location cannot be written, or belongs to another job."""


class PredictionError(LakeinferError):
    """The model raised while predicting a batch."""


def require(module: str, extra: str, purpose: str):  # type: ignore[no-untyped-def]
    """Import an optional backend or raise :class:`MissingExtraError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, purpose) from exc
