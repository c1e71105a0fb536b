"""lakeinfer inside your own Spark jobs: ``score(df, model) -> DataFrame``.

    from lakeinfer.spark import score
    predictions = score(spark.read.parquet("s3a://lake/events/"), "model.onnx", keep=["event_id"])
    predictions.write.parquet("s3a://lake/scored/")

Needs ``pip install 'lakeinfer[spark]'`` on the driver and on every executor's Python.
"""

from .engines.spark import ScoreStats, score

__all__ = ["ScoreStats", "score"]
