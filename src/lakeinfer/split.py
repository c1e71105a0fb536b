"""The ``lakeinfer split`` command: its options and what it prints (the work is in models.staged.split)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    split = commands.add_parser("split", help="split a model into stages, each run in a process of its own")
    split.add_argument("--model", required=True, help="ONNX graph, XGBoost or LightGBM model to split")
    split.add_argument("--stages", required=True, type=int, help="number of stages (processes) to split it into")
    split.add_argument("--output", required=True, help="folder to write the staged model to")
    split.add_argument("--flavor", choices=("onnx", "xgboost", "lightgbm"), help="override flavor detection")
    split.add_argument("--features", type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
                       help="input columns, in the model's order (default: the names the model holds)")
    split.add_argument("--devices", type=lambda v: [d.strip() for d in v.split(",") if d.strip()],
                       help="where each stage runs: cpu or cuda:N, one for all or one per stage (default cpu); "
                       "the model option device overrides it")
    split.add_argument("--overwrite", action="store_true", help="replace an existing staged model folder")
    split.add_argument("--json", action="store_true", help="print the manifest as JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .models.staged.split import split_model, stage_table

    manifest = split_model(args.model, args.stages, args.output, features=args.features, flavor=args.flavor,
                           overwrite=args.overwrite, devices=args.devices)
    if args.json:
        print(json.dumps(asdict(manifest), default=list))
    else:
        print(stage_table(manifest))
        print(f"wrote {len(manifest.stages)} stages of {args.model} to {args.output}")
    return 0
