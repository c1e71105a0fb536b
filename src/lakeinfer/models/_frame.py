"""Feature columns as the pandas DataFrame a model was fitted on, built once per batch.

Numbers become float64 (a null: NaN). Categorical features become pandas categories built from
the batch's own values, in whatever order a file's dictionary has them: scikit-learn's encoders,
XGBoost and LightGBM all map a category to the ones they learned *by value*, so the file's codes
never reach the model, and an unseen category follows the framework's own rule. String features
of estimators that encode strings themselves (a ColumnTransformer's OneHotEncoder) stay strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import SchemaError
from ..schema import column_or_error

__all__ = ["NUMBER", "CATEGORY", "STRING", "FeatureKinds", "by_position", "feature_frame"]

NUMBER, CATEGORY, STRING = "number", "category", "string"


@dataclass(frozen=True)
class FeatureKinds:
    """What each feature is to the model, and what the model stores about its categories.

    ``kinds``: feature -> NUMBER, CATEGORY (a pandas category) or STRING (plain strings);
    ``categories``: the categories learned in training, where the model keeps them;
    ``closed``: categorical features whose unknown values the model refuses (an encoder with
    ``handle_unknown='error'``): such a value is a bad record, named, not a failed batch.
    """

    kinds: Mapping[str, str] = field(default_factory=dict)
    categories: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    closed: frozenset[str] = frozenset()

    @property
    def any_text(self) -> bool:
        return any(kind != NUMBER for kind in self.kinds.values())

    def kind(self, name: str) -> str:
        return self.kinds.get(name, NUMBER)

    def describe(self, features: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for name in features:
            entry: dict[str, Any] = {"name": name, "type": self.kind(name)}
            if name in self.categories:
                entry["categories"] = [_plain(c) for c in self.categories[name]]
            out.append(entry)
        return out

    def closed_values(self) -> dict[str, pa.Array]:
        """The known categories of each closed feature, as Arrow value sets."""
        out = {}
        for name in self.closed:
            try:
                out[name] = pa.array([c for c in self.categories.get(name, ()) if c == c])  # NaN: not a value
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: left to the model to refuse
                continue
        return out


def by_position(own: Sequence[str] | None, chosen: Sequence[str] | None, kinds: Sequence[str],
                categories: Sequence[tuple[Any, ...] | None], closed: Sequence[bool] = ()) -> FeatureKinds:
    """Kinds given per position of the model's features, keyed by the names the batch uses."""
    names = list(chosen or own or ())
    if len(names) != len(kinds):
        return FeatureKinds()
    return FeatureKinds(
        kinds={n: k for n, k in zip(names, kinds, strict=True) if k != NUMBER},
        categories={n: c for n, c in zip(names, categories, strict=True) if c is not None},
        closed=frozenset(n for n, c in zip(names, closed, strict=False) if c),
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def feature_frame(batch: pa.RecordBatch, features: Sequence[str], kinds: FeatureKinds) -> Any:
    """The features of ``batch`` as a DataFrame with the dtypes the model was fitted on."""
    import pandas as pd

    data: dict[str, Any] = {}
    for name in features:
        column = column_or_error(batch, name)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        kind = kinds.kind(name)
        arrow_type = column.type
        value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
        if kind == NUMBER:
            if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)
                    or pa.types.is_boolean(value_type)):
                raise SchemaError(f"feature column '{name}' has type {arrow_type}; the model needs a number")
            if pa.types.is_dictionary(arrow_type):
                column = column.cast(value_type)
            data[name] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            continue
        known = kinds.categories.get(name)
        if not _is_text(value_type) and known and isinstance(known[0], str):
            shown = ", ".join(repr(c) for c in known[:5]) + (", ..." if len(known) > 5 else "")
            raise SchemaError(f"feature column '{name}' has type {arrow_type}; the model expects a category "
                              f"(one of {shown})")
        if kind == CATEGORY:
            encoded = column if pa.types.is_dictionary(arrow_type) else column.dictionary_encode()
            data[name] = encoded.to_pandas()  # a Categorical of the batch's values
        else:
            data[name] = pd.Series(_strings(column), dtype=object)
    return pd.DataFrame(data, copy=False)


def _strings(column: pa.Array) -> np.ndarray:
    """The values of a string column as Python strings (None for null), one object per distinct
    value: cheaper to build than one per row, and the encoders' hash lookups reuse its hash."""
    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    size = len(encoded.dictionary)
    lookup = np.empty(size + 1, dtype=object)
    lookup[:size] = encoded.dictionary.to_numpy(zero_copy_only=False)
    lookup[size] = None
    return lookup[encoded.indices.fill_null(size).to_numpy(zero_copy_only=False)]
