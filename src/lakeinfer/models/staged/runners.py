"""What a stage process runs: its own stage file, loaded once, turning the tensors it receives into
the tensors it sends on. Only the stage process imports the framework of its stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ConfigError, ModelLoadError, require
from .manifest import StageEntry

__all__ = ["Runner", "load_runner", "merge_scores"]

Tensors = dict[str, Any]
Runner = Callable[[Tensors], Tensors]

FEATURES = "X"      # the feature matrix, in every tree shard's inputs and outputs but the last
MARGIN = "margin"   # the raw scores summed over the trees of the shards so far


def load_runner(folder: str, entry: StageEntry, *, threads: int, device: str | None) -> Runner:
    """The stage of ``entry`` (a file under ``folder``), loaded for ``threads`` threads on ``device``."""
    path = os.path.join(folder, entry.file)
    if entry.kind == "onnx":
        return _onnx_runner(path, entry, threads, device)
    if entry.kind == "onnx_trees":
        session = _onnx_session(path, threads, device)
        name = session.get_inputs()[0].name
        return _shard(entry, lambda x: session.run(None, {name: x})[0])
    if device not in (None, "", "cpu"):
        raise ConfigError(f"a {entry.kind} stage runs on the CPU only, not on {device}")
    if entry.kind == "xgboost":
        return _xgboost_runner(path, entry, threads)
    if entry.kind == "lightgbm":
        lgb = require("lightgbm", "lightgbm", "a LightGBM stage")
        booster = lgb.Booster(model_file=path)
        return _shard(entry, lambda x: booster.predict(x, raw_score=True, num_threads=threads))
    raise ModelLoadError(f"stage {entry.file}: unknown stage kind '{entry.kind}'")


def _providers(device: str | None) -> list[Any]:
    import onnxruntime as ort

    if device in (None, "", "cpu"):
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda":
        raise ConfigError(f"unknown device '{device}': use cpu or cuda:N")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(f"device {device}: this onnxruntime has no CUDA execution provider "
                          "(install onnxruntime-gpu)")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def _onnx_session(path: str, threads: int, device: str | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # a stage holds its weights once, mapped from its .data file: no second, pre-packed copy of each
    # matrix (packing a matrix per call costs 1/rows of the call's work: little at 1,024 rows)
    options.add_session_config_entry("session.disable_prepacking", "1")
    providers = _providers(device)
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"cannot load stage {os.path.basename(path)}: {exc}") from exc


def _onnx_runner(path: str, entry: StageEntry, threads: int, device: str | None) -> Runner:
    session = _onnx_session(path, threads, device)
    inputs = [i.name for i in session.get_inputs()]
    made = [o.name for o in session.get_outputs()]

    def run(tensors: Tensors) -> Tensors:
        feeds = {name: tensors[name] for name in inputs}
        rows = len(next(iter(feeds.values())))
        if rows == 1:  # as the ONNX flavor does: a lone row goes in twice (see _OnnxOutputs._rows)
            results = [r[:1] for r in session.run(made, {k: np.concatenate([v, v]) for k, v in feeds.items()})]
        else:
            results = session.run(made, feeds)
        out = dict(zip(made, results, strict=True))
        return {name: _zipmap_to_array(out[name]) if name in out else tensors[name] for name in entry.outputs}

    return run


def _zipmap_to_array(value: Any) -> Any:
    """skl2onnx's ZipMap output (a list of {class: probability}) as the [N, K] probabilities, as
    the ONNX flavor reads it; a tensor as it is."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return np.array([list(row.values()) for row in value], dtype=np.float64)
    return value


def _xgboost_runner(path: str, entry: StageEntry, threads: int) -> Runner:
    xgb = require("xgboost", "xgboost", "an XGBoost stage")
    booster = xgb.Booster()
    booster.load_model(path)
    booster.set_param({"nthread": threads})
    first = MARGIN not in entry.inputs

    def margin(x: np.ndarray) -> np.ndarray:
        if first:  # the first shard adds the model's base score; every other shard adds its trees only
            return np.asarray(booster.inplace_predict(x, predict_type="margin"))
        groups = int(entry.merge.get("groups", 1)) if entry.merge else 0
        shape = (len(x), groups) if groups > 1 else (len(x),)
        zero = np.zeros(shape, dtype=np.float32)
        return np.asarray(booster.inplace_predict(x, predict_type="margin", base_margin=zero))

    return _shard(entry, margin)


def _shard(entry: StageEntry, raw: Callable[[np.ndarray], Any]) -> Runner:
    """A range of trees: adds its raw scores to those of the shards before it; the last shard
    turns the sum into the model's outputs (the link applied once, to the whole sum)."""

    def run(tensors: Tensors) -> Tensors:
        x = tensors[FEATURES]
        scores = np.asarray(raw(x), dtype=np.float64)
        if MARGIN in tensors:
            scores = tensors[MARGIN] + scores
        if entry.merge is not None and entry.merge.get("final"):
            return merge_scores(entry.merge, scores)
        return {FEATURES: x, MARGIN: scores}

    return run


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _labelled(labels: np.ndarray, probability: np.ndarray | None) -> Tensors:
    out: Tensors = {"prediction": labels}
    if probability is not None:
        out["probability"] = probability
    return out


def merge_scores(merge: dict[str, Any], scores: np.ndarray) -> Tensors:
    """The model's outputs from the raw scores of all its trees (``merge``: how, from the manifest)."""
    rule = merge["rule"]
    if rule == "xgboost":
        return _xgboost_outputs(merge["objective"], scores)
    if rule == "lightgbm":
        if merge["link"] == "sigmoid":
            p = _sigmoid(float(merge.get("sigmoid", 1.0)) * scores.reshape(-1))
            return _labelled((p > 0.5).astype(np.int64), np.column_stack([1.0 - p, p]))
        if merge["link"] == "softmax":
            proba = _softmax(scores)
            return _labelled(np.argmax(proba, axis=1).astype(np.int64), proba)
        return {"prediction": scores.reshape(-1)}
    if rule == "onnx_trees":
        return _onnx_tree_outputs(merge, scores)
    raise ModelLoadError(f"unknown merge rule '{rule}'")


def _xgboost_outputs(objective: str, margin: np.ndarray) -> Tensors:
    """As the XGBoost flavor answers, from the summed margins."""
    if objective in ("binary:logistic", "reg:logistic"):
        p = _sigmoid(margin.reshape(-1))
        if objective == "reg:logistic":
            return {"prediction": p}
        return _labelled((p > 0.5).astype(np.int64), np.column_stack([1.0 - p, p]))
    if objective == "multi:softprob":
        proba = _softmax(margin)
        return _labelled(np.argmax(proba, axis=1).astype(np.int64), proba)
    if objective == "multi:softmax":
        return {"prediction": np.argmax(margin, axis=1).astype(np.int64)}
    if objective in ("binary:logitraw", "binary:hinge"):
        return {"prediction": (margin.reshape(-1) > 0).astype(np.int64)}
    if objective in ("count:poisson", "reg:gamma", "reg:tweedie"):
        return {"prediction": np.exp(margin.reshape(-1))}
    return {"prediction": margin.reshape(-1)}


def _onnx_tree_outputs(merge: dict[str, Any], scores: np.ndarray) -> Tensors:
    """onnxruntime's TreeEnsembleClassifier / Regressor head, after the sum over every tree."""
    scores = scores.reshape(len(scores), -1)
    if merge.get("base_values"):
        scores = scores + np.asarray(merge["base_values"], dtype=np.float64)
    post = merge.get("post_transform", "NONE")
    labels = merge.get("classlabels")
    names = merge["outputs"]
    if labels is None:  # a regressor
        if merge.get("aggregate") == "AVERAGE":
            scores = scores / float(merge["trees"])
        return {names[0]: _post(post, scores).astype(np.float32)}
    classes = np.asarray(labels)
    if scores.shape[1] == 1 and len(classes) == 2:
        # one score for two classes: onnxruntime's binary case, P(class 1) or its margin
        s = scores[:, 0]
        if merge.get("positive_weights"):
            two = np.column_stack([1.0 - s, s])
            label = np.where(s > 0.5, classes[1], classes[0])
        else:
            two = np.column_stack([-s, s])
            label = np.where(s > 0, classes[1], classes[0])
        return {names[0]: label, names[1]: _post(post, two).astype(np.float32)}
    proba = _post(post, scores)
    return {names[0]: classes[np.argmax(scores, axis=1)], names[1]: proba.astype(np.float32)}


def _post(post: str, scores: np.ndarray) -> np.ndarray:
    if post == "NONE":
        return scores
    if post == "LOGISTIC":
        return _sigmoid(scores)
    if post == "SOFTMAX":
        return _softmax(scores)
    raise ModelLoadError(f"post_transform {post} is not supported in a staged tree ensemble")
