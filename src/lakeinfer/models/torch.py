"""PyTorch models: TorchScript archives and torch.export programs (.pt2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, require
from ..schema import Signature, TensorSpec
from ._base import TabularModel

# A TorchScript archive may carry this extra file: {"features": [...]} names the input columns.
EXTRA_FILE = "lakeinfer.json"


def _device(torch: Any, device: str | None) -> Any:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchModel(TabularModel):
    """A module taking one float tensor (N, features) and returning a tensor or a tuple of them."""

    input_dtype = np.float32

    def __init__(self, path: str, module: Any, *, flavor: str, device: Any,
                 features: Sequence[str] | None, named: Sequence[str] | None) -> None:
        self.flavor = flavor  # type: ignore[misc]
        self.module = module
        self.device = device
        signature = Signature(
            inputs=(TensorSpec("input", "float32", (None, len(named) if named else None)),),
            outputs=(TensorSpec("prediction", "float32"),),
            features=tuple(named) if named else None,
            extra={"device": str(device)},
        )
        super().__init__(path, signature, features=features, width=len(named) if named else None)

    def _predict_array(self, x: np.ndarray, batch: pa.RecordBatch) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            result = self.module(torch.from_numpy(x).to(self.device))
        if isinstance(result, dict):
            return {str(k): v.detach().cpu().numpy() for k, v in result.items()}
        if isinstance(result, tuple | list):
            if len(result) == 1:
                return {"prediction": result[0].detach().cpu().numpy()}
            return {f"output_{i}": v.detach().cpu().numpy() for i, v in enumerate(result)}
        return {"prediction": result.detach().cpu().numpy()}


def load(path: str, *, features: Sequence[str] | None = None, threads: int | None = None,
         device: str | None = None, exported: bool | None = None, **_: Any) -> TorchModel:
    torch = require("torch", "torch", "a PyTorch model")
    if threads:
        torch.set_num_threads(threads)
    dev = _device(torch, device)
    if exported is None:
        exported = path.endswith(".pt2")
    named = None
    try:
        if exported:
            module = torch.export.load(path).module()
            flavor = "torch_export"
        else:
            extra = {EXTRA_FILE: ""}
            module = torch.jit.load(path, map_location=dev, _extra_files=extra)
            module.eval()
            if extra[EXTRA_FILE]:
                named = json.loads(extra[EXTRA_FILE]).get("features")
            flavor = "torchscript"
    except Exception as exc:
        raise ModelLoadError(f"cannot load PyTorch model {path}: {exc}") from exc
    if exported:
        module = module.to(dev)
    return TorchModel(path, module, flavor=flavor, device=dev, features=features, named=named)
