"""``lakeinfer stream --engine spark``: Spark Structured Streaming with the Kafka source and sink,
the model applied through the Spark engine's path (mapInArrow, a model load per Python worker), on
a classic session (``--master``) or a Spark Connect server (``--remote``) through the same APIs.

Delivery: Spark's Kafka source replays from the checkpoint, and its Kafka sink is at-least-once:
after a failure, outputs of the last micro-batch may be written again. Rows that cannot be scored
(bad JSON, a missing or non-numeric feature) get null predictions here; the dead-letter topic is
the local engine's (`lakeinfer stream` without --engine spark).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from typing import Any

from ..errors import ConfigError
from ..spark.scoring import score
from ..spark.session import connect_remote, session
from .config import StreamConfig

# The connector of each Spark minor whose dependencies all resolve from Maven Central: its
# spark-token-provider-kafka-0-10 exists for 4.1.1 but not for 4.1.0, 4.1.2 or 4.1.3. Connectors
# keep to Spark's public API within a minor, so 4.1.1 serves every 4.1.x.
KAFKA_CONNECTORS = {"4.0": "4.0.0", "4.1": "4.1.1", "4.2": "4.2.0"}


def _json_schema(values: list[str | None]) -> Any:
    """Spark's schema of JSON records, from the records themselves (read here: a Spark Connect
    client has no RDD to give ``spark.read.json``); a value that is not a JSON object is left out."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    records = []
    for value in values:
        try:
            record = json.loads(value) if value else None
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    try:
        schema = pa.schema(list(pa.array(records, pa.struct([]) if not records else None).type))  # every key
    except (pa.ArrowException, TypeError, ValueError):  # values of mixed types in one field: as text
        schema = pa.schema([(name, pa.string()) for name in dict.fromkeys(k for r in records for k in r)])
    return from_arrow_schema(pa.schema([f if not pa.types.is_null(f.type) else f.with_type(pa.string())
                                        for f in schema]))


def _connector() -> str:
    """The Kafka connector for this Spark's minor version; LAKEINFER_SPARK_KAFKA_VERSION overrides."""
    import os

    import pyspark

    minor = ".".join(pyspark.__version__.split(".")[:2])
    version = os.environ.get("LAKEINFER_SPARK_KAFKA_VERSION") or KAFKA_CONNECTORS.get(minor, f"{minor}.0")
    return f"org.apache.spark:spark-sql-kafka-0-10_2.13:{version}"


def run_spark_stream(config: StreamConfig, *, master: str | None = None, remote: str | None = None,
                     checkpoint: str | None = None, trigger: str | None = None) -> None:
    if not checkpoint:
        raise ConfigError("stream --engine spark needs --checkpoint DIR (where Spark keeps offsets and state)")
    from pyspark.sql import functions as F

    remote = connect_remote(master, remote)
    if remote:  # the server has its jars; a killed client's query of this checkpoint is stopped first
        spark = session(None, {"spark.sql.shuffle.partitions": "4"}, remote=remote, job=f"stream:{checkpoint}")
        for query in spark.streams.active:
            query.stop()
    else:
        spark = session(master or "local[*]", {"spark.jars.packages": _connector(),
                                               "spark.sql.shuffle.partitions": "4"})
    kafka = {"kafka.bootstrap.servers": config.bootstrap_servers}
    recipe = dataclasses.replace(config.recipe, on_error="null")
    # the records' JSON schema, from the messages already on the topic (features as doubles)
    seen = spark.read.format("kafka").options(**kafka).option("subscribe", config.input_topic).load().limit(200)
    try:
        values = seen.select(F.col("value").cast("string")).toArrow().column(0).to_pylist()
    except Exception as exc:
        if remote and "DATA_SOURCE_NOT_FOUND" in str(exc):
            from ..spark.tables import server_lacks

            raise server_lacks("kafka", [_connector()], "no data source 'kafka'") from None
        raise
    inferred = _json_schema(values)
    model = recipe.load_model()
    features = list(model.input_columns)
    from pyspark.sql.types import DoubleType, StructField, StructType

    fields = [StructField(f, DoubleType()) for f in features]
    fields += [f for f in inferred.fields if f.name in config.keep and f.name not in features]
    schema = StructType(fields)
    keep = [k for k in config.keep if k in schema.fieldNames()]

    def rows_of(df: Any) -> Any:
        parsed = df.select(F.col("key").alias("__key"), F.from_json(F.col("value").cast("string"), schema).alias("r"))
        return parsed.select("__key", *[F.col(f"r.{f}").alias(f) for f in schema.fieldNames()])

    # rows already on the topic give the output schema (a stream cannot be sampled)
    table = rows_of(seen).limit(64).toArrow()
    sample = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if sample is None:
        raise ConfigError(f"topic {config.input_topic} holds no records yet to learn their fields from")
    stream = (spark.readStream.format("kafka").options(**kafka).option("subscribe", config.input_topic)
              .option("startingOffsets", "earliest").option("failOnDataLoss", "false").load())
    scored = score(rows_of(stream), recipe, keep=["__key", *keep], sample=sample)
    values = [F.col(c) for c in scored.columns if c != "__key"]
    out = scored.select(F.col("__key").alias("key"), F.to_json(F.struct(*values)).alias("value"))
    writer = (out.writeStream.format("kafka").options(**kafka).option("topic", config.output_topic)
              .option("checkpointLocation", checkpoint))
    if trigger:
        writer = writer.trigger(processingTime=trigger)
    query = writer.start()
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.is_set() and query.isActive:
        stop.wait(0.5)
    if query.isActive:
        query.stop()  # the micro-batch in hand finishes; the checkpoint records where to resume
    exception = query.exception()
    spark.stop()
    if exception is not None:
        from ..spark.scoring import lakeinfer_error

        raise lakeinfer_error(exception)
