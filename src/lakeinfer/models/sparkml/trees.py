"""Spark ML decision trees and tree ensembles (classifiers and regressors)."""

from __future__ import annotations

__all__: list[str] = []
