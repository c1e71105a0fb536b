"""A deliberately slow estimator, importable by worker processes, for kill-and-resume tests."""

from __future__ import annotations

import time

import numpy as np


class SlowClassifier:
    """Predicts class 1 where the first feature is positive, after sleeping ``delay`` seconds."""

    def __init__(self, n_features: int, delay: float) -> None:
        self.n_features_in_ = n_features
        self.classes_ = np.array([0, 1])
        self.delay = delay

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return (np.asarray(x)[:, 0] > 0).astype(np.int64)


class SlowEcho:
    """A regressor whose prediction identifies its row (10 x the first feature), after ``delay`` seconds."""

    def __init__(self, n_features: int, delay: float, load_delay: float = 0.0) -> None:
        self.n_features_in_ = n_features
        self.delay = delay
        self.load_delay = load_delay

    def __setstate__(self, state: dict) -> None:  # type: ignore[type-arg]
        self.__dict__.update(state)
        time.sleep(self.load_delay)  # a model that takes a while to load

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return np.asarray(x)[:, 0] * 10.0


class CountedEcho(SlowEcho):
    """A SlowEcho that appends a line to ``log`` each time it is loaded (unpickled)."""

    def __init__(self, n_features: int, log: str) -> None:
        super().__init__(n_features, 0.0)
        self.log = log

    def __setstate__(self, state: dict) -> None:  # type: ignore[type-arg]
        super().__setstate__(state)
        with open(self.log, "a") as out:
            out.write("loaded\n")
