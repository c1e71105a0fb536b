"""Spark ML linear models and naive Bayes."""

from __future__ import annotations

__all__: list[str] = []
