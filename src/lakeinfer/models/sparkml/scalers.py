"""Spark ML stages that scale, normalize, impute, bucket and project numbers and vectors."""

from __future__ import annotations

__all__: list[str] = []
