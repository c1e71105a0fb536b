"""lakeinfer inside your own Spark jobs: ``score(df, model) -> DataFrame``.

    from lakeinfer.spark import score
    predictions = score(spark.read.parquet("s3a://lake/events/"), "model.onnx", keep=["event_id"])
    predictions.write.parquet("s3a://lake/scored/")

Needs ``pip install 'lakeinfer[spark]'`` on the driver and on every executor's Python.
"""

from .scoring import ScoreStats, score
from .tables import jars_conf as _jars_conf

__all__ = ["ScoreStats", "score", "table_conf"]


def table_conf(*kinds: str) -> dict[str, str]:
    """The settings a Spark session needs from its start to read and write tables of ``kinds``
    (``"iceberg"``, ``"delta"``): the connector jars and the session extensions. Jars reach only a
    JVM that starts with them, so pass these when you build your own session."""
    unknown = sorted(set(kinds) - {"iceberg", "delta"})
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown table kind '{unknown[0]}'; choose iceberg or delta")
    return _jars_conf(set(kinds))
