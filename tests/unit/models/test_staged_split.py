"""The staged model's splitter and stage runners, in this process (no stage processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lakeinfer.errors import ConfigError
from lakeinfer.models.staged import Manifest, _devices, split_model
from lakeinfer.models.staged.runners import load_runner, merge_scores
from lakeinfer.models.staged.split_onnx import cut_graph
from lakeinfer.models.staged.split_trees import tree_ranges
from tests.integration.test_staged import residual_mlp


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()}), strict=True))


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_cut_stages_chained_equal_the_whole_graph(tmp_path: Path, stages: int) -> None:
    path = residual_mlp(tmp_path / "mlp.onnx", hidden=32, layers=5)
    model = onnx.load(str(path))
    x = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    want = _run(model, {"X": x})
    cuts = cut_graph(model, stages, source=str(path))
    assert len(cuts) == stages and abs(sum(c.cost_share for c in cuts) - 1) < 1e-9
    tensors: dict[str, np.ndarray] = {"X": x}
    for cut in cuts:
        onnx.checker.check_model(cut.model)
        assert set(cut.received) <= set(tensors)
        made = _run(cut.model, tensors)
        tensors = {name: made.get(name, tensors.get(name)) for name in cut.sent}  # type: ignore[misc]
    np.testing.assert_array_equal(tensors["label"], want["label"])
    np.testing.assert_allclose(tensors["probabilities"], want["probabilities"], atol=1e-6)
    # four equal hidden matrices: two or four stages hold equal weights
    if stages in (2, 4):
        sizes = [c.weight_bytes for c in cuts]
        assert max(sizes) / min(sizes) < 1.2, sizes


def test_runners_chained_in_process_equal_the_whole_graph(tmp_path: Path) -> None:
    path = residual_mlp(tmp_path / "mlp.onnx", hidden=32, layers=4)
    manifest = split_model(str(path), 3, str(tmp_path / "staged"))
    assert Manifest.read(str(tmp_path / "staged")) == manifest
    x = np.random.default_rng(1).normal(size=(20, 5)).astype(np.float32)
    want = _run(onnx.load(str(path)), {"X": x})
    for rows in (x, x[:1]):
        tensors = {"X": rows}
        for entry in manifest.stages:
            tensors = load_runner(str(tmp_path / "staged"), entry, threads=1, device=None)(tensors)
        np.testing.assert_allclose(tensors["probabilities"], want["probabilities"][: len(rows)], atol=1e-6)


def test_a_subgraph_node_that_is_the_whole_graph_is_named(tmp_path: Path) -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["X"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 5])])
    node = helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
                              initializer=[numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConfigError, match=r"node 'the_if' \(If\) holds a subgraph that cannot be divided"):
        cut_graph(model, 2, source="if.onnx")


def test_tree_ranges_are_contiguous_and_refuse_too_few_trees() -> None:
    assert tree_ranges(10, 3, "trees", "m") == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(ConfigError, match="it has 2 boosting rounds, and a boosting round cannot be divided"):
        tree_ranges(2, 3, "boosting rounds", "m")


def test_the_link_is_applied_once_to_the_summed_margins() -> None:
    margins = np.array([0.5, -2.0])
    out = merge_scores({"rule": "xgboost", "objective": "binary:logistic"}, margins)
    np.testing.assert_allclose(out["probability"][:, 1], 1 / (1 + np.exp(-margins)))
    assert out["prediction"].tolist() == [1, 0]
    multi = merge_scores({"rule": "lightgbm", "link": "softmax"}, np.array([[1.0, 2.0, 0.0]]))
    np.testing.assert_allclose(multi["probability"].sum(axis=1), 1.0)
    assert multi["prediction"].tolist() == [1]


def test_devices_one_for_all_or_one_per_stage() -> None:
    assert _devices(None, 2) == [None, None]
    assert _devices("cpu", 3) == ["cpu", "cpu", "cpu"]
    assert _devices("cpu,cuda:0", 2) == ["cpu", "cuda:0"]
    with pytest.raises(ConfigError, match="3 devices given for a model of 2 stages"):
        _devices("cpu,cpu,cuda:0", 2)
