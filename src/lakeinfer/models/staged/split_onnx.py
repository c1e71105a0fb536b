"""Cutting an ONNX graph into stages: between nodes, in topological order, balancing each stage's
weight bytes and compute (multiply-accumulates per row).

Each cut's boundary is every tensor made before it and used after it, so a skip connection that
crosses a cut crosses as one more tensor. A tensor a stage neither makes nor uses is passed on by
that stage. An initializer used on both sides of a cut goes into both stage files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

__all__ = ["GraphCut", "cut_graph", "save_stage"]

EXTERNAL_MIN_BYTES = 64 * 1024  # a weight this large goes into the stage's .data file
ALIGN = 64 * 1024  # its offset there: a multiple of the mapping granularity
_NO_CUT_INSIDE = ("If", "Loop", "Scan")


@dataclass
class GraphCut:
    """One stage of a cut graph: its nodes, its weights, and the tensors at its two boundaries."""

    model: Any           # the stage's onnx.ModelProto
    received: tuple[str, ...]
    sent: tuple[str, ...]
    weight_bytes: int
    cost_share: float
    covers: str
    sent_bytes_per_row: int | None = None


def _tensor_bytes(tensor: Any) -> int:
    import onnx

    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(math.prod(tensor.dims)) * itemsize


def _subgraph_names(node: Any) -> Iterator[str]:
    """Names a node's subgraphs (If, Loop, Scan bodies) read from the graph around them."""
    import onnx

    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            made = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                for name in [*inner.input, *_subgraph_names(inner)]:
                    if name and name not in made:
                        yield name
                made.update(inner.output)


def _node_inputs(node: Any) -> list[str]:
    return [n for n in [*node.input, *_subgraph_names(node)] if n]


def _macs(node: Any, weights: dict[str, Any], shapes: dict[str, Sequence[Any]]) -> float:
    """Multiply-accumulates per row of a node with a weight matrix (MatMul, Gemm, Conv); 0 otherwise."""
    held = [weights[n] for n in node.input if n in weights]
    if not held:
        return 0.0
    size = float(max(math.prod(t.dims) for t in held))
    if node.op_type == "Conv" and node.output[0] in shapes:
        spatial = [d for d in shapes[node.output[0]][2:] if isinstance(d, int)]
        size *= float(math.prod(spatial)) if spatial else 1.0
    return size if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "Einsum") else 0.0


def _value_infos(model: Any, source: str) -> tuple[dict[str, Any], dict[str, Sequence[Any]]]:
    """Every tensor's ValueInfoProto the graph declares or shape inference finds, and its dims."""
    import tempfile

    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except ValueError:  # over 2 GB in memory: inferred from the file, its weights left where they are
        with tempfile.TemporaryDirectory() as work:
            onnx.shape_inference.infer_shapes_path(source, os.path.join(work, "inferred.onnx"))
            inferred = onnx.load(os.path.join(work, "inferred.onnx"), load_external_data=False).graph
    except Exception:  # an op onnx cannot infer: the declared types only
        inferred = model.graph
    infos: dict[str, Any] = {}
    for info in [*inferred.value_info, *model.graph.input, *model.graph.output]:
        infos[info.name] = info
    shapes: dict[str, Sequence[Any]] = {}
    for name, info in infos.items():
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return infos, shapes


def _plain_tensor(info: Any) -> bool:
    return info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type != 0


def cut_graph(model: Any, stages: int, *, source: str) -> list[GraphCut]:
    """``model`` (an onnx.ModelProto) cut into ``stages`` stages, or a ConfigError naming what blocks it."""
    graph = model.graph
    nodes = list(graph.node)
    weights = {t.name: t for t in graph.initializer}
    infos, shapes = _value_infos(model, source)
    # each weight counts once, at the first node that reads it; a Constant node's value is a weight too
    seen: set[str] = set()
    node_bytes, node_macs = [], []
    for node in nodes:
        held = [n for n in _node_inputs(node) if n in weights and n not in seen]
        seen.update(held)
        size = sum(_tensor_bytes(weights[n]) for n in held)
        size += sum(_tensor_bytes(a.t) for a in node.attribute if node.op_type == "Constant" and a.HasField("t"))
        node_bytes.append(size)
        node_macs.append(_macs(node, weights, shapes))
    total_bytes, total_macs = sum(node_bytes) or 1, sum(node_macs)
    cost = [(b / total_bytes + (m / total_macs if total_macs else b / total_bytes)) / 2 if sum(node_bytes) else 1 / len(nodes)
            for b, m in zip(node_bytes, node_macs, strict=True)]

    inputs = [i.name for i in graph.input if i.name not in weights]
    outputs = [o.name for o in graph.output]
    made_at = {name: -1 for name in inputs}
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in _node_inputs(node):
            last_use[name] = index
        for name in node.output:
            if name:
                made_at[name] = index
    for name in outputs:
        last_use[name] = len(nodes)

    def boundary(after: int) -> list[str]:
        return [n for n, at in made_at.items() if at <= after < last_use.get(n, -1)]

    legal = [i for i in range(len(nodes) - 1) if all(_plain_tensor(infos.get(n)) for n in boundary(i))]
    if len(legal) < stages - 1:
        raise ConfigError(_no_cut_line(source, nodes, node_bytes, stages, len(legal)))
    cuts = _balanced(legal, cost, stages, {i: len(boundary(i)) for i in legal})
    starts = [0, *(c + 1 for c in cuts)]
    ends = [*cuts, len(nodes) - 1]
    result = []
    for k, (first, last) in enumerate(zip(starts, ends, strict=True)):
        received = inputs if k == 0 else boundary(first - 1)
        sent = outputs if k == stages - 1 else boundary(last)
        part = nodes[first: last + 1]
        used = {n for node in part for n in _node_inputs(node)}
        stage_model = _stage_model(model, part, [n for n in received if n in used],
                                   [n for n in sent if first <= made_at.get(n, -1) <= last],
                                   [weights[n] for n in weights if n in used], infos)
        stage_bytes = sum(_tensor_bytes(weights[n]) for n in weights if n in used)
        stage_bytes += sum(node_bytes[i] for i in range(first, last + 1) if nodes[i].op_type == "Constant")
        result.append(GraphCut(stage_model, tuple(received), tuple(sent), stage_bytes, sum(cost[first: last + 1]),
                               f"nodes {first + 1}-{last + 1} of {len(nodes)}", _row_bytes(sent, infos, shapes)))
    return result


def _row_bytes(names: Sequence[str], infos: dict[str, Any], shapes: dict[str, Sequence[Any]]) -> int | None:
    """Bytes per row of the tensors ``names`` (None where a shape beyond the rows is not known)."""
    import onnx

    total = 0
    for name in names:
        dims = shapes.get(name)
        if dims is None or not dims or any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(infos[name].type.tensor_type.elem_type).itemsize
        total += itemsize * int(math.prod(dims[1:]))
    return total


def _balanced(legal: list[int], cost: list[float], stages: int, crossing: dict[int, int]) -> list[int]:
    """N-1 cut positions among ``legal`` whose cost before each cut is nearest k/N of the total.

    Among positions within 1% of the total of the nearest one, the one fewest tensors cross wins:
    after a residual block's Add rather than between a MatMul and its bias (one tensor fewer to
    send, and the MatMul and Add stay together for onnxruntime's fusion).
    """
    prefix = []
    running = 0.0
    for c in cost:
        running += c
        prefix.append(running)
    total = running or 1.0
    cuts: list[int] = []
    lo = 0
    for k in range(1, stages):
        hi = len(legal) - (stages - 1 - k)  # leave a legal position for each cut still to place
        options = range(lo, hi)
        target = total * k / stages
        nearest = min(abs(prefix[legal[j]] - target) for j in options)
        best = min((j for j in options if abs(prefix[legal[j]] - target) <= nearest + 0.01 * total),
                   key=lambda j: (crossing[legal[j]], abs(prefix[legal[j]] - target)))
        cuts.append(legal[best])
        lo = best + 1
    return cuts


def _no_cut_line(source: str, nodes: list[Any], node_bytes: list[int], stages: int, legal: int) -> str:
    blocking = next((n for n in nodes if n.op_type in _NO_CUT_INSIDE), None)
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {legal} place{'s' if legal != 1 else ''} to cut"
    if blocking is not None and len(nodes) <= stages:
        return (f"cannot split {source} into {stages} stages ({where}): node '{blocking.name or blocking.output[0]}' "
                f"({blocking.op_type}) holds a subgraph that cannot be divided")
    heaviest = max(range(len(nodes)), key=lambda i: node_bytes[i]) if nodes else 0
    node = nodes[heaviest] if nodes else None
    name = (node.name or node.output[0]) if node is not None else "(none)"
    kind = node.op_type if node is not None else "?"
    return (f"cannot split {source} into {stages} stages ({where}): node '{name}' ({kind}) holds "
            f"{node_bytes[heaviest] / 2**20:.1f} MiB of weights that cannot be divided")


def _stage_model(model: Any, part: list[Any], inputs: list[str], outputs: list[str], weights: list[Any],
                 infos: dict[str, Any]) -> Any:
    import onnx

    graph = onnx.helper.make_graph(part, f"{model.graph.name or 'graph'}_stage", [infos[n] for n in inputs],
                                   [infos[n] for n in outputs], initializer=weights)
    stage = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    stage.functions.extend(model.functions)
    for prop in model.metadata_props:
        stage.metadata_props.add(key=prop.key, value=prop.value)
    return stage


def save_stage(stage: Any, path: str, weight_bytes: int) -> None:
    """Write a stage file with its large weights in ``<file>.data`` beside it, each at an offset
    aligned to 64 KiB: onnxruntime then maps the weights from the file instead of reading them
    into a buffer and copying them again into its tensors, so the stage holds them once (and a
    stage over 2 GB, the limit of one protobuf, can be written at all)."""
    from onnx import TensorProto

    location = os.path.basename(path) + ".data"
    offset = 0
    with open(path + ".data", "wb") as data:
        for tensor in stage.graph.initializer:
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_MIN_BYTES:
                continue
            offset = -(-offset // ALIGN) * ALIGN
            data.seek(offset)
            data.write(tensor.raw_data)
            length = len(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += length
    with open(path, "wb") as fh:
        fh.write(stage.SerializeToString())
