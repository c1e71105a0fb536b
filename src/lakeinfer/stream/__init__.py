"""``lakeinfer stream``: the model inside a Kafka stream (and on Spark Structured Streaming)."""
