"""TensorFlow SavedModel folders (flavor ``tensorflow``) and Keras 3 ``.keras`` files (``keras``).

Both run code from the model when loaded (TensorFlow's SECURITY.md: loading an untrusted model is
running untrusted code; Keras' ``safe_mode`` was bypassed more than once), so both need
``trust``, checked before TensorFlow is imported. TensorFlow is imported here only, by the
process that scores: it is not fork-safe, and every process lakeinfer starts for a model
(local workers, server workers) is spawned, never forked after the import.

Every process sets TensorFlow up the same way before its first op (see :func:`tensorflow`):
oneDNN as ``TF_ENABLE_ONEDNN_OPTS`` says (on unless the user set it), one inter-op thread and the
intra-op threads lakeinfer gives it, and memory growth on every GPU, so that every mode gives the
same bits. A SavedModel is called through one of its signatures (``serving_default`` unless
another is named); a Keras model through one traced function of its inputs. Inputs and outputs
are mapped to columns by :mod:`lakeinfer.models._tf_columns`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, ModelLoadError, UntrustedModelError, require
from ..schema import Signature, TensorSpec
from ._base import Model
from ._tf_columns import InputPlan, output_arrays, plan_inputs

__all__ = ["DEFAULT_SIGNATURE", "TensorFlowModel", "load", "tensorflow"]

DEFAULT_SIGNATURE = "serving_default"

_TRUST_HINT = ("pass --trust-model (API: trust=True) if you trust its source: TensorFlow and Keras "
               "run code from the model when they load it")

# The intra-op threads this process's TensorFlow was given; None until it was set up.
_configured: dict[str, int] = {}


def tensorflow(threads: int | None = None, device: str | None = None) -> Any:
    """TensorFlow, imported and set up for scoring in this process, identically in every mode.

    The environment is set before the import (oneDNN is read then); the threads and the GPUs
    before the first op, once per process: TensorFlow refuses to change them afterwards, so a
    process that ran TensorFlow before keeps what it had.
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # TensorFlow's own default, made explicit
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines on stderr
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        llvm_first()
    tf = require("tensorflow", "tensorflow", "a TensorFlow or Keras model")
    if not _configured:
        from ..cpu import available_cores

        intra = threads or available_cores()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # initialised by the caller's own TensorFlow code: its settings stand
            intra = tf.config.threading.get_intra_op_parallelism_threads()
        _place(tf, device)
        _configured["intra"] = intra
    return tf


def llvm_first() -> None:
    """Triton (PyTorch's compiler, which ``torch.export`` imports) before TensorFlow, where both are
    installed: each carries LLVM, and Triton loaded after TensorFlow aborts the process (LLVM's
    options registered twice), so a process that held a TensorFlow model could not then load a
    PyTorch export. In this order both load. Triton's import takes about 0.2 s."""
    import importlib.util

    if "triton" not in sys.modules and "tensorflow" not in sys.modules and importlib.util.find_spec("triton"):
        try:
            import triton  # noqa: F401
        except Exception:  # noqa: BLE001 (a broken Triton is PyTorch's concern, not this model's)
            pass


def _place(tf: Any, device: str | None) -> None:
    """Memory growth on every GPU (TensorFlow would map all their memory), and one GPU per process
    where ``device`` names one (``cuda:1``, ``gpu:1``); ``cpu`` hides the GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        if device is not None and device.lower() == "cpu":
            tf.config.set_visible_devices([], "GPU")
            return
        if device is not None and ":" in device:
            index = int(device.rsplit(":", 1)[1])
            if index >= len(gpus):
                raise ConfigError(f"device {device}: this machine has {len(gpus)} GPUs")
            gpus = [gpus[index]]
            tf.config.set_visible_devices(gpus, "GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # initialised already: its placement stands
        pass
    except ValueError as exc:
        raise ConfigError(f"device {device} is not a device TensorFlow knows ({exc})") from None


def _spec(name: str, dtype: Any, shape: Any) -> TensorSpec:
    dims = tuple(shape) if shape is not None and getattr(shape, "rank", 0) is not None else (None,)
    return TensorSpec(name, _dtype_name(dtype), tuple(None if d is None else int(d) for d in dims) or (None,))


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    if name == "string":
        return name
    try:
        return str(np.dtype(name))
    except TypeError:  # bfloat16, complex, resource: named as TensorFlow names them; a column cannot feed them
        return str(name)


def _signature_specs(function: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """A SavedModel signature's inputs and outputs, each sorted by name (TensorFlow's own order)."""
    _, named = function.structured_input_signature
    inputs = tuple(_spec(n, s.dtype, s.shape) for n, s in sorted(named.items()))
    outputs = function.structured_outputs
    if not isinstance(outputs, Mapping):
        raise ModelLoadError("the signature's outputs are not named")
    return inputs, tuple(_spec(n, s.dtype, s.shape) for n, s in sorted(outputs.items()))


class TensorFlowModel(Model):
    """A TensorFlow function of named input tensors, returning named output tensors.

    Each input is read from the column of its name (see :mod:`._tf_columns`); a model of one
    [N, K] input may read K scalar columns named by ``features`` instead. Each output is a
    column of its name: a scalar for [N] and [N, 1], a list of K values for [N, K].
    """

    def __init__(self, path: str, call: Any, *, flavor: str, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], features: Sequence[str] | None, tf: Any,
                 extra: Mapping[str, Any]) -> None:
        self.flavor = flavor  # type: ignore[misc]
        self._call = call
        self._tf = tf
        self._plan: InputPlan = plan_inputs(inputs, features, where=f"the {flavor} model {path}")
        numbers = [t.dtype for t in inputs if t.dtype != "string"]
        # ModelStep refuses values past float32's range as bad records for a float32 model
        self.input_dtype = np.float32 if numbers and set(numbers) == {"float32"} else np.float64
        signature = Signature(
            inputs=inputs,
            outputs=tuple(_written(t) for t in outputs),
            features=self._plan.columns,
            extra=dict(extra),
        )
        super().__init__(path, signature)
        self.kinds = self._plan.kinds
        self._outputs = tuple(t.name for t in outputs)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self._plan.columns

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        feeds = {name: self._tf.constant(values) for name, values in self._plan.feeds(batch).items()}
        result = self._call(feeds)
        return output_arrays({name: result[name] for name in self._outputs}, batch.num_rows)


def _written(spec: TensorSpec) -> TensorSpec:
    """An output as its column holds it: [N, 1] a scalar, [N, K] floats a list of doubles."""
    if len(spec.shape) == 2 and spec.shape[1] == 1 or len(spec.shape) <= 1:
        return TensorSpec(spec.name, spec.dtype, (None,))
    dtype = "float64" if spec.dtype.startswith("float") else spec.dtype
    return TensorSpec(spec.name, dtype, (None, None if len(spec.shape) > 2 else spec.shape[1]))


def _listing(signatures: Mapping[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]],
             chosen: str) -> list[str]:
    """One line per signature for ``inspect``: its name, inputs and outputs."""
    lines = []
    for name, (inputs, outputs) in signatures.items():
        mark = " (scored)" if name == chosen else ""
        lines.append(f"signature {name}{mark}: {', '.join(t.describe() for t in inputs)} -> "
                     f"{', '.join(t.describe() for t in outputs)}")
    return lines


def _load_saved_model(path: str, tf: Any, signature: str | None, features: Sequence[str] | None) -> TensorFlowModel:
    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot load TensorFlow SavedModel {path}: {type(exc).__name__}: {exc}") from exc
    functions = dict(loaded.signatures)
    chosen = signature or DEFAULT_SIGNATURE
    if chosen not in functions:
        have = ", ".join(sorted(functions)) or "none"
        raise ConfigError(f"the SavedModel {path} has no signature '{chosen}' (it has: {have}); "
                          "choose one with --signature")
    specs = {}
    for name, function in sorted(functions.items()):
        try:
            specs[name] = _signature_specs(function)
        except ModelLoadError as exc:
            if name == chosen:
                raise ModelLoadError(f"SavedModel {path}, signature '{name}': {exc}") from None
    inputs, outputs = specs[chosen]
    function = functions[chosen]

    def call(feeds: dict[str, Any]) -> Mapping[str, Any]:
        result: Mapping[str, Any] = function(**feeds)
        return result

    extra = {"signature": chosen, "signatures": sorted(functions), "notes": _listing(specs, chosen)}
    model = TensorFlowModel(path, call, flavor="tensorflow", inputs=inputs, outputs=outputs,
                            features=features, tf=tf, extra=extra)
    model._loaded = loaded  # type: ignore[attr-defined]  # the functions' variables live as long as it
    return model


def _output_names(model: Any) -> list[str]:
    """A functional model's ``output_names`` (its output layers' names); for a Sequential, which
    has none, the names of the layers that give its outputs."""
    names = getattr(model, "output_names", None)
    if names:
        return [str(n) for n in names]
    found = []
    for i, tensor in enumerate(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        found.append(str(getattr(operation, "name", f"output_{i}")))
    return found if len(set(found)) == len(found) else [f"output_{i}" for i in range(len(found))]


def _load_keras(path: str, tf: Any, signature: str | None, features: Sequence[str] | None) -> TensorFlowModel:
    if signature is not None:
        raise ConfigError(f"--signature is for a SavedModel folder; the Keras file {path} has one call")
    keras = require("keras", "tensorflow", "a Keras model")
    try:  # trusted by the caller: a Lambda layer's code is what the user asked to run
        model = keras.saving.load_model(path, compile=False, safe_mode=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load Keras model {path}: {type(exc).__name__}: {exc}") from exc
    try:
        tensors = list(model.inputs)
        names = _output_names(model)
    except (AttributeError, ValueError) as exc:
        raise ModelLoadError(f"the Keras model {path} has no defined inputs (build it on keras.Input): {exc}") from exc
    inputs = tuple(_spec(t.name, t.dtype, t.shape) for t in tensors)
    if len({t.name for t in inputs}) != len(inputs):
        raise ModelLoadError(f"the Keras model {path} has two inputs of one name: {[t.name for t in inputs]}")
    order = [t.name for t in inputs]
    structure = getattr(model, "input", None)
    # a model built on a dict of inputs is called with that dict (a list would warn of its structure)
    keyed = ({key: next(i for i, t in enumerate(tensors) if t is tensor) for key, tensor in structure.items()}
             if isinstance(structure, dict) else None)

    @tf.function(input_signature=[tf.TensorSpec(t.shape, t.dtype) for t in tensors])
    def traced(*values: Any) -> dict[str, Any]:
        given: Any = {key: values[i] for key, i in keyed.items()} if keyed is not None else (
            list(values) if len(values) > 1 else values[0])
        result = model(given, training=False)
        if isinstance(result, Mapping):
            return dict(result)
        flat = list(result) if isinstance(result, list | tuple) else [result]
        return dict(zip(names, flat, strict=True))

    def call(feeds: dict[str, Any]) -> Mapping[str, Any]:
        result: Mapping[str, Any] = traced(*(feeds[name] for name in order))
        return result

    shapes = traced.get_concrete_function().structured_outputs
    outputs = tuple(_spec(n, shapes[n].dtype, shapes[n].shape) for n in shapes)
    extra = {"keras_version": keras.__version__,
             "notes": [f"Keras model: {', '.join(t.describe() for t in inputs)} -> "
                       f"{', '.join(t.describe() for t in outputs)}"]}
    tf_model = TensorFlowModel(path, call, flavor="keras", inputs=inputs, outputs=outputs,
                               features=features, tf=tf, extra=extra)
    tf_model._keras = model  # type: ignore[attr-defined]
    return tf_model


def load(path: str, *, trust: bool = False, features: Sequence[str] | None = None, threads: int | None = None,
         device: str | None = None, signature: str | None = None, keras: bool = False, **_: Any) -> TensorFlowModel:
    """A SavedModel folder (``keras=False``) or a Keras 3 file, trusted; TensorFlow imported only now."""
    kind = "Keras model" if keras else "TensorFlow SavedModel"
    if not trust:
        raise UntrustedModelError(f"refusing to load {kind} {path}: {_TRUST_HINT}")
    tf = tensorflow(threads, device)
    loader = _load_keras if keras else _load_saved_model
    return loader(path, tf, signature, features)
