"""lakeinfer: one trained model, scored over a data lake, served over HTTP, embedded in a stream."""

from ._api import batch, inspect_model
from ._version import __version__
from .engines import BatchSummary
from .errors import (
    BadRecordError,
    ConfigError,
    InputError,
    LakeinferError,
    MissingExtraError,
    ModelLoadError,
    OutputError,
    PredictionError,
    SchemaError,
    UntrustedModelError,
    WorkerLostError,
)
from .models import Model, detect_flavor, load_model
from .pipeline import (
    Argmax,
    Assemble,
    Cast,
    FillNull,
    LabelMap,
    ModelStep,
    Pipeline,
    Rename,
    Select,
    Threshold,
    Transformer,
)
from .runtime import MODEL, PipelineRecipe
from .schema import Signature, TensorSpec
from .spec import JobSpec, load_spec

__all__ = [
    "__version__",
    "batch",
    "inspect_model",
    "BatchSummary",
    "load_model",
    "detect_flavor",
    "Model",
    "Signature",
    "TensorSpec",
    "Pipeline",
    "PipelineRecipe",
    "MODEL",
    "Transformer",
    "ModelStep",
    "Select",
    "Rename",
    "Cast",
    "FillNull",
    "Assemble",
    "Threshold",
    "Argmax",
    "LabelMap",
    "JobSpec",
    "load_spec",
    "LakeinferError",
    "ConfigError",
    "MissingExtraError",
    "ModelLoadError",
    "UntrustedModelError",
    "InputError",
    "SchemaError",
    "BadRecordError",
    "OutputError",
    "PredictionError",
    "WorkerLostError",
]
