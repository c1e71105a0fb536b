"""The settings a batch command gives its own Spark session before the user's."""

from __future__ import annotations

from lakeinfer.spark.session import batch_defaults


def test_local_masters_start_without_the_web_ui() -> None:
    assert batch_defaults("local[2]") == {"spark.ui.enabled": "false"}
    assert batch_defaults("local") == {"spark.ui.enabled": "false"}


def test_clusters_keep_the_web_ui() -> None:
    for master in ("spark://host:7077", "yarn", "k8s://https://host:443", None):
        assert "spark.ui.enabled" not in batch_defaults(master)
