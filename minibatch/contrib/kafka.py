"""Kafka as a source and as a sink of a stream (``pip install 'minibatch[kafka]'``).

:class:`KafkaSource` feeds a stream from a Kafka topic, :class:`KafkaSink`
writes a consumer's results to a topic. Both use kafka-python and JSON values.

Delivery promise, end to end (topic A -> stream -> function -> topic B):
at least once. The source commits a batch's offsets only after the stream
acknowledged the append of that batch, so a process that dies in between
reads the batch again rather than losing it. The sink waits until Kafka
acknowledged every message of a window before the window is committed, so a
window whose send fails is retried (and finally dead-lettered), never lost.
A message may therefore arrive more than once; nothing is dropped silently.
"""
# The source, the sink and the client helpers they share live in modules of
# their own; this module keeps the import path users and 0.6 programs know.
from minibatch.contrib.kafka_clients import DEFAULT_URLS  # noqa: F401 (re-exported)
from minibatch.contrib.kafka_sink import KafkaSink, KafkaSinkError  # noqa: F401 (re-exported)
from minibatch.contrib.kafka_source import KafkaSource  # noqa: F401 (re-exported)
