"""``lakeinfer inspect``'s text output."""

from __future__ import annotations

__all__ = ["print_inspect"]


def print_inspect(info: dict) -> None:  # type: ignore[type-arg]
    print(f"flavor:   {info['flavor']}")
    print(f"path:     {info['path']}")
    print(f"task:     {info['task']}")
    if info.get("classes") is not None:
        print(f"classes:  {info['classes']}")
    cols = info.get("input_columns")
    print(f"features: {', '.join(cols) if cols else '(not named by the model: pass --features)'}")
    for feature in info.get("feature_types") or []:
        if feature["type"] != "number" or "categories" in feature:
            shown = feature.get("categories")
            listed = f" {shown}" if shown is not None else ""
            print(f"  {feature['name']}: {feature['type']}{listed}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for t in info[kind]:
            dims = ", ".join("N" if d is None else str(d) for d in t["shape"])
            print(f"  {t['name']}: {t['dtype']}[{dims}]")
    extra = info.get("extra") or {}
    if extra.get("stages"):  # a Spark ML pipeline: its stages, and what the reader noted
        print(f"stages (saved by Spark {extra.get('spark_version', '?')}):")
        for stage in extra["stages"]:
            print(f"  {stage['class']} {stage['uid']}: {', '.join(stage['inputs'])} -> {', '.join(stage['outputs'])}")
    for note in extra.get("notes") or []:
        print(f"note: {note}")
