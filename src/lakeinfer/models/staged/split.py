"""``lakeinfer split``: write a staged model folder from an ONNX graph or a tree ensemble."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ConfigError, ModelLoadError, OutputError, require
from .. import detect_flavor, load_model, model_digest
from .._base import Model, TabularModel
from .manifest import Manifest, StageEntry, is_staged
from .runners import FEATURES, MARGIN

__all__ = ["split_model", "stage_table"]

SPLITTABLE = ("onnx", "xgboost", "lightgbm")


def split_model(model: str, stages: int, output: str, *, features: Sequence[str] | None = None,
                flavor: str | None = None, overwrite: bool = False,
                devices: Sequence[str] | None = None) -> Manifest:
    """Split ``model`` into ``stages`` stages under the folder ``output``; the manifest written.

    ``devices``: where each stage runs by default (``cpu``, ``cuda:N``, ``ray`` for a Ray actor), one for
    all or one per stage.
    The folder is written beside its final place and renamed when complete, so a failed split
    leaves nothing that looks like a staged model.
    """
    if stages < 1:
        raise ConfigError(f"--stages must be at least 1, not {stages}")
    if devices is not None and len(devices) not in (1, stages):
        raise ConfigError(f"{len(devices)} devices given for {stages} stages: name one, or one per stage")
    for device in devices or ():
        local = device.removeprefix("ray:") if device.startswith("ray:") else device  # ray[:DEVICE]: a Ray actor
        if device != "ray" and local != "cpu" and not (local.startswith("cuda")
                                                       and local[4:] in ("", *(f":{i}" for i in range(64)))):
            raise ConfigError(f"unknown device '{device}': use cpu, cuda:N or ray (a Ray actor)")
    chosen = flavor or detect_flavor(model)
    if chosen not in SPLITTABLE:
        raise ConfigError(f"cannot split a {chosen} model: lakeinfer splits ONNX graphs, XGBoost and LightGBM "
                          "models (export others to ONNX)")
    if os.path.exists(output):
        if not overwrite or not is_staged(output):
            raise OutputError(f"{output} exists; pass --overwrite to replace a staged model folder")
    loaded = load_model(model, flavor=chosen, features=features, threads=1)
    if not isinstance(loaded, TabularModel):
        raise ConfigError(f"cannot split {model}: a staged model takes one feature matrix, and this model "
                          f"has the inputs {', '.join(loaded.input_columns)}")
    if loaded.kinds.any_text:
        raise ConfigError(f"cannot split {model}: it takes categorical or string features")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".split-", dir=parent)
    try:
        entries, input_name, output_names = _write_stages(chosen, model, stages, work, loaded)
        manifest = Manifest(
            source=os.path.basename(model), source_sha256=model_digest(model), source_flavor=chosen,
            signature=loaded.signature.to_dict(), features=loaded.features, input_name=input_name,
            input_dtype=np.dtype(loaded.input_dtype).name,
            width=loaded.width, handles_missing=loaded.handles_missing, output_names=output_names,
            stages=tuple(entries),
            devices=tuple(devices) * (stages if len(devices) == 1 else 1) if devices else None,
        )
        manifest.write(work)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _write_stages(flavor: str, model: str, stages: int, folder: str,
                  loaded: Model) -> tuple[list[StageEntry], str, dict[str, str]]:
    names = list(loaded.output_names)
    if flavor in ("xgboost", "lightgbm"):
        from .split_trees import shard_lightgbm, shard_xgboost

        shards, merge = (shard_xgboost if flavor == "xgboost" else shard_lightgbm)(model, stages, folder)
        return _tree_entries(flavor, shards, merge, names), FEATURES, {n: n for n in names}
    onnx = require("onnx", "split", "splitting an ONNX model")
    try:
        graph_model = onnx.load(model)
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {model}: {exc}") from exc
    raw_names = [o.name for o in graph_model.graph.output]
    output_names = dict(zip(raw_names, names, strict=True))
    from .split_trees import is_tree_graph, shard_onnx_trees

    tree_node = is_tree_graph(graph_model)
    if tree_node is not None:
        shards, merge = shard_onnx_trees(graph_model, tree_node, stages, folder, model)
        return _tree_entries("onnx_trees", shards, merge, raw_names), FEATURES, output_names
    from .split_onnx import cut_graph, save_stage

    cuts = cut_graph(graph_model, stages, source=model)
    del graph_model
    entries = []
    for k, cut in enumerate(cuts):
        file = f"stage_{k + 1}.onnx"
        save_stage(cut.model, os.path.join(folder, file), cut.weight_bytes)
        entries.append(StageEntry(file=file, kind="onnx", inputs=cut.received, outputs=cut.sent,
                                  weight_bytes=cut.weight_bytes, cost_share=round(cut.cost_share, 4),
                                  covers=cut.covers, sent_bytes_per_row=cut.sent_bytes_per_row))
    return entries, cuts[0].received[0], output_names


def _tree_entries(kind: str, shards: list[tuple[str, int, str]], merge: dict[str, Any],
                  last_outputs: list[str]) -> list[StageEntry]:
    total = sum(size for _, size, _ in shards) or 1
    entries = []
    for k, (file, size, covers) in enumerate(shards):
        last = k == len(shards) - 1
        entries.append(StageEntry(
            file=file, kind=kind, inputs=(FEATURES,) if k == 0 else (FEATURES, MARGIN),
            outputs=tuple(last_outputs) if last else (FEATURES, MARGIN), weight_bytes=size,
            cost_share=round(size / total, 4), covers=covers,
            merge={**merge, "final": True} if last else ({"groups": merge.get("groups", 1)} if kind == "xgboost" else None),
        ))
    return entries


def stage_table(manifest: Manifest) -> str:
    """The stages as a table: file, what it covers, weights, share, the tensors it sends on."""
    total = manifest.weight_bytes or 1
    rows = [("stage", "file", "covers", "weights", "share", "cost", "sends")]
    for k, stage in enumerate(manifest.stages, 1):
        rows.append((str(k), stage.file, stage.covers, f"{stage.weight_bytes / 2**20:.2f} MiB",
                     f"{stage.weight_bytes / total:.0%}", f"{stage.cost_share:.0%}", ", ".join(stage.outputs)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
