"""The two ways a column's levels become H2O codes agree: Arrow's kernels (large batches) and a
dict (the few rows of a served request), on nulls, unseen levels, dictionaries and integer levels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lakeinfer.errors import SchemaError
from lakeinfer.models.h2o import _codes, _codes_few

DOMAIN = ["a", "b", "c", "10", "7"]


def _both(column: pa.Array) -> None:
    known = pa.array(DOMAIN, pa.string())
    index = {level: i for i, level in enumerate(DOMAIN)}
    codes, unseen = _codes(column, "plan", known)
    few_codes, few_unseen = _codes_few(column, "plan", index)
    np.testing.assert_array_equal(few_codes, codes)
    assert (unseen is None) == (few_unseen is None)
    if unseen is not None:
        np.testing.assert_array_equal(few_unseen, unseen)


@pytest.mark.parametrize("values", [
    ["a", "c", "b"],
    ["a", None, "zz", "c", "yy", "zz", None],
    [None, None],
    ["q"],
])
def test_string_levels_code_alike(values: list[str | None]) -> None:
    _both(pa.array(values, pa.string()))
    _both(pa.array(values, pa.large_string()))
    _both(pa.array(values, pa.string()).dictionary_encode())


def test_integer_levels_matched_by_their_text_alike() -> None:
    _both(pa.array([10, 7, None, 3, 10, 99], pa.int64()))
    _both(pa.array([10, 7, None, 3], pa.int32()).dictionary_encode())


def test_random_rows_code_alike() -> None:
    rng = np.random.default_rng(3)
    pool = [*DOMAIN, "new1", "new2", None]
    for _ in range(50):
        _both(pa.array(list(rng.choice(np.array(pool, dtype=object), size=int(rng.integers(1, 64)))), pa.string()))


def test_a_column_that_is_not_levels_is_refused_by_both() -> None:
    column = pa.array([1.5, 2.0])
    with pytest.raises(SchemaError, match="'plan' has type double; the model expects a category"):
        _codes(column, "plan", pa.array(DOMAIN))
    with pytest.raises(SchemaError, match="'plan' has type double; the model expects a category"):
        _codes_few(column, "plan", {level: i for i, level in enumerate(DOMAIN)})
