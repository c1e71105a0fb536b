"""Model flavors: detect one from a path and load it behind the common :class:`Model` contract."""

from __future__ import annotations

import hashlib
import importlib
import os
import zipfile
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, ModelLoadError
from ._base import Model, TabularModel
from ._frame import NUMBER

__all__ = ["FLAVORS", "NUMBER", "Model", "TabularModel", "detect_flavor", "load_model", "model_digest"]

# flavor -> (module, loader keyword arguments); read-only so no caller can grow it by accident.
FLAVORS: MappingProxyType[str, tuple[str, dict[str, Any]]] = MappingProxyType({
    "onnx": ("onnx", {}),
    "sklearn": ("sklearn", {"skops": False}),
    "skops": ("sklearn", {"skops": True}),
    "xgboost": ("xgboost", {}),
    "lightgbm": ("lightgbm", {}),
    "torchscript": ("torch", {"exported": False}),
    "torch_export": ("torch", {"exported": True}),
    "mlflow": ("mlflow", {}),
    "spark": ("sparkml", {}),
    "h2o": ("h2o", {}),
    "tensorflow": ("tensorflow", {"keras": False}),
    "keras": ("tensorflow", {"keras": True}),
    "staged": ("staged", {}),
})

_BY_SUFFIX = {
    ".onnx": "onnx",
    ".skops": "skops",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".ubj": "xgboost",
    ".pt2": "torch_export",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".lgb": "lightgbm",
    ".keras": "keras",
}


def detect_flavor(path: str) -> str:
    """The flavor of the model at ``path``, from its name and, where that is ambiguous, its bytes."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "MLmodel")):
            return "mlflow"
        if os.path.isfile(os.path.join(path, "stages.json")):  # written by lakeinfer split
            return "staged"
        if os.path.isdir(os.path.join(path, "metadata")) and os.path.isdir(os.path.join(path, "stages")):
            return "spark"
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            return "tensorflow"
        raise ModelLoadError(
            f"{path} is a directory but neither an MLflow model (no MLmodel file) nor a Spark ML PipelineModel"
        )
    if not os.path.exists(path):
        raise ModelLoadError(f"model file {path} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if "model.ini" in names:  # an H2O-3 MOJO
            return "h2o"
        if any(n.endswith("archive_format") or "/models/" in n for n in names):
            return "torch_export"
        if any(n.endswith("constants.pkl") or n.endswith("/data.pkl") for n in names):
            return "torchscript"
        if any(n == "schema.json" for n in names):
            return "skops"
    text = head.lstrip()
    if text.startswith(b"{") and b'"learner"' in head:
        return "xgboost"
    if text.startswith(b"tree\n") or b"\nversion=v" in head[:64] or text.startswith(b"tree\r\n"):
        return "lightgbm"
    if suffix == ".json":
        return "xgboost"
    if suffix in (".txt", ".model"):
        return "lightgbm"
    raise ModelLoadError(
        f"cannot tell the flavor of {path}; name it with --flavor ({', '.join(sorted(FLAVORS))})"
    )


def load_model(path: str | os.PathLike[str], *, flavor: str | None = None, trust: bool = False,
               features: Sequence[str] | None = None, threads: int | None = None,
               device: str | None = None, signature: str | None = None) -> Model:
    """Load the model at ``path``.

    ``flavor`` overrides detection; ``trust`` allows formats that run code on load (pickle,
    MLflow); ``features`` names the input columns in the model's order; ``threads`` bounds the
    framework's own thread pool (one worker process should not take every core); ``signature``
    picks a TensorFlow SavedModel's signature.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model {path} does not exist")
    chosen = flavor or detect_flavor(path)
    if chosen not in FLAVORS:
        raise ConfigError(f"unknown flavor '{chosen}'; choose one of {', '.join(sorted(FLAVORS))}")
    module_name, fixed = FLAVORS[chosen]
    module = importlib.import_module(f"{__name__}.{module_name}")
    chosen_signature = {} if signature is None else {"signature": signature}
    model: Model = module.load(path, trust=trust, features=features, threads=threads,
                               device=device, **chosen_signature, **fixed)
    return model


def model_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 over the model's bytes (a directory: every file, by relative path)."""
    path = os.fspath(path)
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names
    )
    for file in files:
        digest.update(os.path.relpath(file, path).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
