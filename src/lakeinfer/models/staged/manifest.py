"""``stages.json``: what a staged model folder holds, written by ``lakeinfer split``.

A staged model is a folder of stage files and this manifest. Stage K receives the tensors named
in its ``inputs`` (stage 1: the feature matrix), and sends on the tensors named in its ``outputs``
(the last stage: the model's outputs). A tensor a later stage needs that this stage neither makes
nor uses (a skip connection crossing the stage) is passed on as it came.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ...errors import ModelLoadError
from ...schema import Signature, TensorSpec

__all__ = ["MANIFEST", "FORMAT", "Manifest", "StageEntry", "is_staged"]

MANIFEST = "stages.json"
FORMAT = 1


def is_staged(path: str) -> bool:
    """True for a folder that ``lakeinfer split`` wrote."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


@dataclass(frozen=True)
class StageEntry:
    """One stage: its file, how to run it, and the tensors that cross its boundaries."""

    file: str
    #: how the stage runs: "onnx" (a graph), "xgboost" or "lightgbm" (a range of trees)
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: bytes of the weights this stage holds, and its share of the model's cost (weights and compute)
    weight_bytes: int
    cost_share: float
    #: what the stage's file covers, in words (nodes, trees)
    covers: str = ""
    #: the last stage of a tree ensemble: how the summed raw scores become the outputs
    merge: dict[str, Any] | None = None
    #: bytes per row of what the stage sends on (None: not known), which sizes the micro-batches
    sent_bytes_per_row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageEntry:
        return cls(file=str(data["file"]), kind=str(data["kind"]), inputs=tuple(data["inputs"]),
                   outputs=tuple(data["outputs"]), weight_bytes=int(data["weight_bytes"]),
                   cost_share=float(data["cost_share"]), covers=str(data.get("covers", "")),
                   merge=data.get("merge"), sent_bytes_per_row=data.get("sent_bytes_per_row"))


@dataclass(frozen=True)
class Manifest:
    """The whole staged model: the source it was split from, its signature and its stages."""

    source: str
    source_sha256: str
    source_flavor: str
    #: the source model's signature as lakeinfer reported it (the staged model reports the same)
    signature: dict[str, Any]
    #: the feature columns, in order (from the model, or ``--features``)
    features: tuple[str, ...] | None
    #: the name, dtype and width of the feature matrix stage 1 receives
    input_name: str
    input_dtype: str
    width: int | None
    handles_missing: bool
    #: the last stage's tensor names -> the output columns the unsplit model writes
    output_names: dict[str, str]
    stages: tuple[StageEntry, ...]
    format: int = FORMAT
    notes: tuple[str, ...] = field(default=())
    #: where each stage runs unless the model's ``device`` option says otherwise (None: the CPU)
    devices: tuple[str, ...] | None = None

    @property
    def weight_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.stages)

    def to_signature(self) -> Signature:
        sig = self.signature

        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

        classes = sig.get("classes")
        return Signature(inputs=specs(sig["inputs"]), outputs=specs(sig["outputs"]),
                         features=tuple(sig["features"]) if sig.get("features") else None,
                         task=sig.get("task", "unknown"), classes=tuple(classes) if classes is not None else None,
                         extra={**sig.get("extra", {}), "stage_count": len(self.stages), "source": self.source})

    def write(self, folder: str) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "stages"}
        data["features"] = list(self.features) if self.features is not None else None
        data["notes"] = list(self.notes)
        data["devices"] = list(self.devices) if self.devices is not None else None
        data["stages"] = [s.to_dict() for s in self.stages]
        with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")

    @classmethod
    def read(cls, folder: str) -> Manifest:
        path = os.path.join(folder, MANIFEST)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("format") != FORMAT:
                raise ModelLoadError(f"{path} has format {data.get('format')!r}; this lakeinfer reads format {FORMAT}")
            stages = tuple(StageEntry.from_dict(s) for s in data["stages"])
            manifest = cls(
                source=str(data["source"]), source_sha256=str(data["source_sha256"]),
                source_flavor=str(data["source_flavor"]), signature=dict(data["signature"]),
                features=tuple(data["features"]) if data.get("features") else None,
                input_name=str(data["input_name"]), input_dtype=str(data["input_dtype"]),
                width=data.get("width"), handles_missing=bool(data["handles_missing"]),
                output_names=dict(data["output_names"]), stages=stages, notes=tuple(data.get("notes", ())),
                devices=tuple(data["devices"]) if data.get("devices") else None,
            )
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot read the staged model's manifest {path}: {type(exc).__name__}: {exc}") from exc
        for stage in manifest.stages:
            if not os.path.isfile(os.path.join(folder, stage.file)):
                raise ModelLoadError(f"staged model {folder}: stage file {stage.file} is missing")
        if not manifest.stages:
            raise ModelLoadError(f"staged model {folder} has no stages")
        return manifest
