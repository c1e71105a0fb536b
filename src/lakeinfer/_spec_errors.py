"""A spec's validation errors as one line naming each bad key's path: ``batch.workers: must be at
least 1, got 0``, ``unknown key 'worker' (did you mean 'workers'?)``."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import ConfigError

__all__ = ["config_error", "show"]


def show(value: Any) -> str:
    """A value as an error message shows it (its repr, cut at 60 characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Loc = tuple[int | str, ...]


def _clean_loc(loc: Loc, lone_step: bool) -> tuple[Loc, str | None]:
    """The location without the discriminator's tag pydantic puts after a step, and that op."""
    from ._spec_schema import STEP_BY_OP
    parts = list(loc)
    if lone_step:
        # validate_step's locations start with the tag, unless the op itself was bad
        op = parts.pop(0) if parts and parts[0] in STEP_BY_OP else None
        return tuple(parts), None if op is None else str(op)
    for i in range(len(parts) - 2):
        if parts[i] == "steps" and isinstance(parts[i + 1], int) and parts[i + 2] in STEP_BY_OP:
            return tuple(parts[:i + 2] + parts[i + 3:]), str(parts[i + 2])
    return tuple(parts), None


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _allowed(parent: tuple[int | str, ...], op: str | None) -> list[str] | None:
    from ._spec_schema import (  # the schemas, which use this module
        SECTIONS,
        STEP_BY_OP,
        ServeModel,
        SpecModel,
    )

    cls: type[BaseModel] | None
    if op is not None and (not parent or isinstance(parent[-1], int)):
        cls = STEP_BY_OP[op]
    elif not parent:
        cls = SpecModel
    elif parent[:2] == ("serve", "models") and len(parent) == 3:
        cls = ServeModel
    else:
        cls = SECTIONS.get(str(parent[0])) if len(parent) == 1 else None
    return [k for k in cls.model_fields if k != "op"] if cls is not None else None


def _unknown_key(key: str, parent: tuple[int | str, ...], op: str | None) -> str:
    noun = "section" if not parent and op is None else "key"
    allowed = _allowed(parent, op)
    if not allowed:
        return f"unknown {noun} {key!r}" + (f" ({op} takes no options)" if op else "")
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
    return f"unknown {noun} {key!r} ({hint})"


_EXPECTED = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a table/mapping",
    "model_type": "a table/mapping", "model_attributes_type": "a table/mapping",
}


def _describe(err: ErrorDetails, lone_step: bool) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    loc, op = _clean_loc(tuple(err["loc"]), lone_step)
    if kind == "extra_forbidden":
        where, message = loc[:-1], _unknown_key(str(loc[-1]), loc[:-1], op)
    elif kind == "missing":
        where, message = loc[:-1], f"missing required key {loc[-1]!r}"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        from ._spec_schema import STEP_OPS

        where = loc
        message = (f"unknown op {ctx.get('tag')!r} (choose one of {', '.join(STEP_OPS)})" if kind == "union_tag_invalid"
                   else f"a step needs an 'op' (one of {', '.join(STEP_OPS)})")
    elif kind in _EXPECTED:
        where, message = loc, f"expected {_EXPECTED[kind]}, got {show(err['input'])}"
    elif kind == "literal_error":
        where, message = loc, f"expected {ctx.get('expected')}, got {show(err['input'])}"
    elif kind == "string_pattern_mismatch":
        where, message = loc, (f"expected a name of letters, digits, '_', '-' and '.', got {show(err['input'])}")
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal"):
        bound = {"greater_than_equal": f"at least {ctx.get('ge')}",
                 "greater_than": f"greater than {ctx.get('gt')}",
                 "less_than_equal": f"at most {ctx.get('le')}"}[kind]
        where, message = loc, f"must be {bound}, got {show(err['input'])}"
    else:
        where, message = loc, err["msg"]
    path = _path(where)
    return f"{path}: {message}" if path else message


def _one_line(exc: ValidationError, lone_step: bool, limit: int = 5) -> str:
    errors = exc.errors(include_url=False)
    messages = list(dict.fromkeys(_describe(e, lone_step) for e in errors))
    text = "; ".join(messages[:limit])
    if len(messages) > limit:
        text += f"; and {len(messages) - limit} more"
    return text.replace("\n", " ")


def config_error(exc: ValidationError, prefix: str, *, lone_step: bool = False) -> ConfigError:
    """One line naming each bad key's path, after ``prefix`` (e.g. ``job spec job.toml``)."""
    return ConfigError(f"{prefix}: {_one_line(exc, lone_step)}")
