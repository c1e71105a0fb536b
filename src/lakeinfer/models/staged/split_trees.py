"""Splitting tree ensembles by tree range: XGBoost and LightGBM boosters, ONNX ``TreeEnsemble*``.

Every shard emits raw scores (margins) for its trees only. The first XGBoost shard keeps the
model's base score and every other one is given a zero base margin, so the base score is counted
once; LightGBM folds its initial score into the first tree. The last shard adds its scores to
the sum and applies the link (sigmoid, softmax, onnxruntime's post-transform) once, to the total:
summing probabilities, or each shard's margins with its own base score, gives other answers.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ...errors import ConfigError, require

__all__ = ["Shard", "shard_lightgbm", "shard_onnx_trees", "shard_xgboost", "tree_ranges"]

Shard = tuple[str, int, str]  # (file written, bytes, what it covers)

XGBOOST_OBJECTIVES = ("binary:logistic", "binary:logitraw", "binary:hinge", "multi:softprob", "multi:softmax",
                      "reg:squarederror", "reg:squaredlogerror", "reg:absoluteerror", "reg:pseudohubererror",
                      "reg:logistic", "count:poisson", "reg:gamma", "reg:tweedie")


def tree_ranges(count: int, stages: int, what: str, source: str) -> list[tuple[int, int]]:
    """``count`` trees (or rounds) in ``stages`` contiguous ranges of sizes as equal as can be."""
    if count < stages:
        raise ConfigError(f"cannot split {source} into {stages} stages: it has {count} {what}, "
                          f"and a {what[:-1]} cannot be divided")
    bounds = [round(count * k / stages) for k in range(stages + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def shard_xgboost(path: str, stages: int, folder: str) -> tuple[list[Shard], dict[str, Any]]:
    xgb = require("xgboost", "xgboost", "splitting an XGBoost model")
    booster = xgb.Booster()
    booster.load_model(path)
    import json

    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    if objective not in XGBOOST_OBJECTIVES:
        raise ConfigError(f"cannot split {path}: objective {objective} is not supported in a staged model")
    if learner["gradient_booster"]["name"] not in ("gbtree", "dart"):
        raise ConfigError(f"cannot split {path}: a {learner['gradient_booster']['name']} booster has no trees")
    groups = int(learner["learner_model_param"].get("num_class", "0") or 0)
    shards = []
    for k, (a, b) in enumerate(tree_ranges(booster.num_boosted_rounds(), stages, "boosting rounds", path)):
        file = f"stage_{k + 1}.ubj"
        booster[a:b].save_model(os.path.join(folder, file))
        shards.append((file, os.path.getsize(os.path.join(folder, file)), f"rounds {a + 1}-{b}"))
    return shards, {"rule": "xgboost", "objective": objective, "groups": max(1, groups)}


def shard_lightgbm(path: str, stages: int, folder: str) -> tuple[list[Shard], dict[str, Any]]:
    lgb = require("lightgbm", "lightgbm", "splitting a LightGBM model")
    booster = lgb.Booster(model_file=path)
    text = booster.model_to_string()
    line = next((ln for ln in text.splitlines() if ln.startswith("objective=")), "objective=regression")
    objective, *options = line.split("=", 1)[1].split()
    settings = dict(o.split(":", 1) for o in options if ":" in o)
    if objective == "binary":
        merge: dict[str, Any] = {"link": "sigmoid", "sigmoid": float(settings.get("sigmoid", 1.0))}
    elif objective in ("multiclass", "softmax"):
        merge = {"link": "softmax"}
    elif objective in ("regression", "regression_l2", "regression_l1", "huber", "fair", "quantile", "mape") \
            and "sqrt" not in options:
        merge = {"link": "identity"}
    else:
        raise ConfigError(f"cannot split {path}: LightGBM objective '{line.split('=', 1)[1]}' is not supported "
                          "in a staged model")
    rounds = booster.current_iteration()
    shards = []
    for k, (a, b) in enumerate(tree_ranges(rounds, stages, "boosting rounds", path)):
        file = f"stage_{k + 1}.txt"
        with open(os.path.join(folder, file), "w", encoding="utf-8") as fh:
            fh.write(booster.model_to_string(start_iteration=a, num_iteration=b - a))
        shards.append((file, os.path.getsize(os.path.join(folder, file)), f"rounds {a + 1}-{b}"))
    return shards, {"rule": "lightgbm", **merge}


def shard_onnx_trees(model: Any, node: Any, stages: int, folder: str, source: str) -> tuple[list[Shard], dict[str, Any]]:
    """Shards of one TreeEnsembleClassifier / Regressor node (the graph's only node but Identity ones)."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    classifier = node.op_type == "TreeEnsembleClassifier"
    prefix = "class_" if classifier else "target_"
    tree_ids = sorted(set(attrs["nodes_treeids"]))
    sizes = {t: 0 for t in tree_ids}
    for t in attrs["nodes_treeids"]:
        sizes[t] += 1
    if classifier:
        labels = attrs.get("classlabels_int64s") or [v.decode() for v in attrs.get("classlabels_strings", [])]
        columns = len(set(attrs["class_ids"])) if len(labels) == 2 and len(set(attrs["class_ids"])) == 1 else len(labels)
    else:
        labels, columns = None, int(attrs.get("n_targets", 1))
    aggregate = attrs.get("aggregate_function", b"SUM")
    aggregate = aggregate.decode() if isinstance(aggregate, bytes) else aggregate
    if aggregate not in ("SUM", "AVERAGE"):
        raise ConfigError(f"cannot split {source}: a tree ensemble that aggregates by {aggregate} has no sum to merge")
    post = attrs.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else post
    base = list(attrs.get("base_values") or [])
    if "base_values_as_tensor" in attrs:
        base = onnx.numpy_helper.to_array(attrs["base_values_as_tensor"]).tolist()
    weight_key = prefix + "weights"
    weights = (attrs[weight_key] if weight_key in attrs
               else onnx.numpy_helper.to_array(attrs[weight_key + "_as_tensor"]).tolist())
    ranges = tree_ranges(len(tree_ids), stages, "trees", source)
    node_trees = np.asarray(attrs["nodes_treeids"])
    leaf_trees = np.asarray(attrs[prefix + "treeids"])
    (x_name,) = [i for i in node.input if i]
    x_info = next(i for i in model.graph.input if i.name == x_name)
    shards = []
    for k, (a, b) in enumerate(ranges):
        keep = set(tree_ids[a:b])
        nodes_mask = np.isin(node_trees, list(keep))
        leaf_mask = np.isin(leaf_trees, list(keep))
        kept: dict[str, Any] = {}
        for name, value in attrs.items():
            if name.startswith("nodes_"):
                kept[name] = _masked(value, nodes_mask)
            elif name.startswith(prefix):
                kept["target_" + name[len(prefix):]] = _masked(value, leaf_mask)
        kept["target_weights"] = [w for w, m in zip(weights, leaf_mask, strict=True) if m]
        kept.pop("target_weights_as_tensor", None)
        kept["n_targets"] = columns
        shard_node = onnx.helper.make_node("TreeEnsembleRegressor", [x_name], ["scores"], domain="ai.onnx.ml",
                                           post_transform="NONE", aggregate_function="SUM", **kept)
        out = onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, columns])
        graph = onnx.helper.make_graph([shard_node], f"trees_{k + 1}", [x_info], [out])
        shard = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        file = f"stage_{k + 1}.onnx"
        onnx.save_model(shard, os.path.join(folder, file))
        shards.append((file, os.path.getsize(os.path.join(folder, file)), f"trees {a + 1}-{b} of {len(tree_ids)}"))
    outputs = _through_identity(model, list(node.output))
    merge = {"rule": "onnx_trees", "post_transform": post, "base_values": base, "outputs": outputs,
             "classlabels": labels, "aggregate": aggregate, "trees": len(tree_ids),
             "positive_weights": bool(all(w >= 0 for w in weights))}
    return shards, merge


def _masked(value: Any, mask: np.ndarray) -> Any:
    import onnx

    if isinstance(value, onnx.TensorProto):
        array = onnx.numpy_helper.to_array(value)[mask]
        return onnx.numpy_helper.from_array(array, value.name)
    return [v for v, m in zip(value, mask, strict=True) if m]


def _through_identity(model: Any, names: list[str]) -> list[str]:
    """The graph outputs the tree node's outputs become, through Identity nodes."""
    renamed = {n: n for n in names}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in renamed.values():
            source = next(k for k, v in renamed.items() if v == node.input[0])
            renamed[source] = node.output[0]
    return [renamed[n] for n in names]


def is_tree_graph(model: Any) -> Any:
    """The TreeEnsemble node of a graph that is that node alone (besides Identity nodes), else None."""
    trees = [n for n in model.graph.node if n.domain == "ai.onnx.ml" and re.match(r"TreeEnsemble(Classifier|Regressor)$", n.op_type)]
    others = [n for n in model.graph.node if n.op_type != "Identity" and n not in trees]
    return trees[0] if len(trees) == 1 and not others else None
