"""Kafka in, Kafka out: a topic feeds a stream, a consumer writes its results to another topic.

    MINIBATCH_KAFKA=localhost:9092 python examples/kafka_roundtrip.py

Needs kafka-python (``pip install 'minibatch[kafka]'``) and a Kafka broker
(MINIBATCH_KAFKA, default localhost:9092) that creates topics on first use.
Each run uses two new topics:

1. a plain kafka-python producer writes ten orders, and one payload that is
   not JSON, to ``orders-<run>``;
2. a KafkaSource appends the orders to the stream 'kafka-roundtrip' and
   commits the Kafka offsets once the stream has them; the bad payload goes
   to the stream's dead letters;
3. a consumer sums windows of five orders; a KafkaSink writes each sum to
   ``totals-<run>`` and returns only when Kafka acknowledged it;
4. a plain kafka-python consumer reads the sums back.

The stream lives in the embedded store (or MINIBATCH_URL). It stops by itself.
"""
import json
import logging
import os
import sys
import time
import uuid

import kafka
import kafka.errors

import minibatch as mb
from minibatch.contrib.kafka import KafkaSink, KafkaSource

BROKER = os.environ.get('MINIBATCH_KAFKA', 'localhost:9092')
# the source logs the rejected payload as a warning; show it
logging.basicConfig(level=logging.WARNING, format='  log: %(message)s')

RUN = uuid.uuid4().hex[:8]
TOPIC_IN, TOPIC_OUT = f'orders-{RUN}', f'totals-{RUN}'


def produce_orders():
    try:
        producer = kafka.KafkaProducer(bootstrap_servers=[BROKER], bootstrap_timeout_ms=10000)
    except kafka.errors.KafkaError as exc:
        sys.exit(f'cannot reach a Kafka broker at {BROKER} (set MINIBATCH_KAFKA): {exc}')
    for i in range(10):
        producer.send(TOPIC_IN, json.dumps({'order': i, 'amount': 10 * (i + 1)}).encode())
    producer.send(TOPIC_IN, b'this is not JSON')
    producer.flush(timeout=10)
    producer.close()
    print(f'produced 10 orders and 1 bad payload to {TOPIC_IN}')


def read_totals(count, timeout=30):
    """Read ``count`` messages of the output topic, from its beginning, without a consumer group."""
    reader = kafka.KafkaConsumer(bootstrap_servers=[BROKER], enable_auto_commit=False,
                                 auto_offset_reset='earliest')
    deadline = time.monotonic() + timeout
    try:
        while not reader.partitions_for_topic(TOPIC_OUT):
            if time.monotonic() > deadline:
                sys.exit(f'no output on {TOPIC_OUT} within {timeout}s')
            time.sleep(0.1)
        reader.assign([kafka.TopicPartition(TOPIC_OUT, p) for p in reader.partitions_for_topic(TOPIC_OUT)])
        totals = []
        while len(totals) < count and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=200).values():
                totals.extend(json.loads(r.value) for r in records)
        return totals
    finally:
        reader.close()


def total(window):
    # runs once per window of five orders; the return value goes to the sink
    return {'orders': sorted(m['order'] for m in window.data),
            'amount': sum(m['amount'] for m in window.data)}


def main():
    produce_orders()
    stream = mb.stream('kafka-roundtrip')
    stream.clear()
    stream.purge_dead_letters()
    stream.attach(KafkaSource(TOPIC_IN, urls=[BROKER]))
    sink = KafkaSink(TOPIC_OUT, urls=[BROKER], timeout=10)
    consumer = mb.streaming(stream.name, size=5, executor='inline', sink=sink, blocking=False)(total)
    try:
        totals = read_totals(2)
    finally:
        stream.stop()          # ends the source (and closes its Kafka consumer)
        consumer.stop()
        consumer.thread.join()
        sink.close()
    for result in sorted(totals, key=lambda t: t['orders']):
        print(f'{TOPIC_OUT}: orders {result["orders"]} amount {result["amount"]}')
    for dead in stream.dead_letters():
        print(f'dead letter from {dead.data["origin"]}: {dead.data["payload"]!r} ({dead.error})')
    if len(totals) != 2:
        sys.exit(f'expected 2 totals, got {len(totals)}')


if __name__ == '__main__':
    main()
