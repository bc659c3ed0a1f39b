"""KafkaSource and KafkaSink against a real Kafka-protocol broker (tansu).

Every test uses its own topics (uuid names), which the broker creates on
first use. Reading a topic back uses partition assignment, not a consumer
group, so only the source under test pays the group join (~3 s on tansu).
A broker that is down is a free loopback port where nothing listens.
"""
import json
import logging
import threading
import time
import uuid

import pytest

import minibatch as mb
from minibatch import streaming
from minibatch.errors import ConfigurationError, InvalidMessage, MinibatchError, StoreUnavailable
from tests.conftest import require_module
from tests.helpers import free_port, wait_until

kafka = require_module('kafka', "pip install 'minibatch[kafka]'")
from minibatch.contrib.kafka import KafkaSink, KafkaSinkError, KafkaSource  # noqa: E402

END = b'"end of test data"'
JOIN = 30  # seconds allowed for a source to join its group and deliver


def unique(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


def produce(bootstrap, topic, values, partition=None):
    """Write raw byte values to ``topic`` with a plain kafka-python producer and wait for the acks."""
    producer = kafka.KafkaProducer(bootstrap_servers=[bootstrap])
    try:
        futures = [producer.send(topic, value=v, partition=partition) for v in values]
        return [f.get(timeout=10) for f in futures]
    finally:
        producer.close()


def read_topic(bootstrap, topic, n, timeout=15):
    """All records of ``topic`` once at least ``n`` arrived (every partition, read to its end).

    To know that nothing more follows, a marker is written to every partition
    after the first ``n`` records came, and reading goes on until each marker
    was seen: Kafka keeps the order within a partition. (tansu's end offsets
    are not exact, so they cannot tell the count.) Markers are not returned.
    """
    consumer = kafka.KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False,
                                   auto_offset_reset='earliest')
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), timeout=timeout,
                                message=f'topic {topic} to exist')
        consumer.assign([kafka.TopicPartition(topic, p) for p in partitions])
        records = []

        def until(condition):
            def more():
                for batch in consumer.poll(timeout_ms=100).values():
                    records.extend(batch)
                return condition()
            wait_until(more, timeout=timeout, interval=0, message=f'records on {topic}')
        until(lambda: len(records) >= n)
        for p in partitions:
            produce(bootstrap, topic, [END], partition=p)
        until(lambda: {r.partition for r in records if r.value == END} == set(partitions))
        return [r for r in records if r.value != END]
    finally:
        consumer.close()


def committed(bootstrap, group, topic):
    """Sum of the offsets ``group`` committed on ``topic`` (0 when none)."""
    consumer = kafka.KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or ()
        return sum(consumer.committed(kafka.TopicPartition(topic, p)) or 0 for p in partitions)
    finally:
        consumer.close()


def source_thread(stream):
    threads = [t for t in threading.enumerate() if t.name == f'minibatch-source-{stream.name}']
    assert len(threads) == 1, threads
    return threads[0]


def kafka_io_threads():
    return [t for t in threading.enumerate() if t.name.startswith('kafka-io')]


def waiting(stream):
    return stream.stats()['available']


def drive(emitter, condition, timeout):
    """Run consumer rounds until ``condition()`` holds."""
    def step():
        emitter.run(blocking=False)
        return condition()
    return wait_until(step, timeout=timeout, interval=0.01, message='the consumer to finish')


class FlakyStream:
    """Stands in for a stream whose store fails on append (a fault a live store will not make on cue).

    ``after=False``: the append raises and writes nothing. ``after=True``: the
    append is written, then it raises, as if the process died right after the
    store acknowledged and before the offsets were committed. Fails once.
    """

    def __init__(self, stream, after):
        self.stream, self.after = stream, after
        self.name = stream.name
        self.failed_batch = None

    def append(self, data):
        if self.failed_batch is not None:
            return self.stream.append(data)
        if self.after:
            self.stream.append(data)
        self.failed_batch = list(data)
        raise StoreUnavailable('store went away (injected)')

    def flush(self):
        self.stream.flush()

    def reject(self, data, error):
        return self.stream.reject(data, error)


# -- the round trip ---------------------------------------------------------
def test_round_trip_topic_to_stream_to_topic(store_url, kafka_bootstrap):
    n, size = 20, 5
    topic_in, topic_out = unique('in'), unique('out')
    produce(kafka_bootstrap, topic_in, [json.dumps({'i': i}).encode() for i in range(n)])

    stream = mb.stream(unique('kafka'), url=store_url)
    source = stream.attach(KafkaSource(topic_in, urls=[kafka_bootstrap]))
    thread = source_thread(stream)
    sink = KafkaSink(topic_out, urls=[kafka_bootstrap], timeout=10)
    emitter = streaming(stream.name, size=size, url=store_url, executor='inline', sink=sink).make(
        lambda window: [dict(m, seen=True) for m in window.data])
    try:
        drive(emitter, lambda: emitter.stats['committed'] >= n // size, timeout=JOIN)
        records = read_topic(kafka_bootstrap, topic_out, n)
        wait_until(lambda: committed(kafka_bootstrap, source.group_id, topic_in) == n, timeout=10,
                   message='the source offsets committed')
    finally:
        stream.stop()
        emitter.close()
        sink.close()
    assert len(records) == n, 'each message written to the output topic exactly once'
    assert sorted(json.loads(r.value)['i'] for r in records) == list(range(n))
    assert all(json.loads(r.value) == {'i': json.loads(r.value)['i'], 'seen': True} for r in records)
    assert stream.dead_letters() == []
    assert source.group_id == f'minibatch-{topic_in}'
    thread.join(5)
    assert not thread.is_alive(), 'stream.stop() ended the source'


# -- at least once: offsets follow the append -------------------------------
@pytest.mark.parametrize('after', [False, True], ids=['append-fails', 'dies-after-append'])
def test_offsets_are_committed_only_after_the_append(kafka_bootstrap, after):
    n = 12
    topic = unique('alo')
    group = unique('group')
    produce(kafka_bootstrap, topic, [json.dumps({'i': i}).encode() for i in range(n)])
    stream = mb.stream(unique('alo'))
    flaky = FlakyStream(stream, after=after)

    first = KafkaSource(topic, urls=[kafka_bootstrap], group_id=group)
    thread = threading.Thread(target=first.stream, args=(flaky,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: flaky.failed_batch is not None, timeout=JOIN, message='the first append')
    finally:
        first.cancel()
        thread.join(10)
    assert not thread.is_alive()
    assert first.failures == 1
    assert committed(kafka_bootstrap, group, topic) == 0, 'no offset committed for a batch not appended'
    appended_before = len(flaky.failed_batch) if after else 0
    assert waiting(stream) == appended_before

    # a new consumer of the same group reads everything again: nothing was lost
    stream.attach(KafkaSource(topic, urls=[kafka_bootstrap], group_id=group))
    try:
        wait_until(lambda: waiting(stream) >= n + appended_before, timeout=JOIN, message='the re-delivery')
        wait_until(lambda: committed(kafka_bootstrap, group, topic) == n, timeout=10,
                   message='offsets committed after the append')
    finally:
        stream.stop()
    values = sorted(m.data['i'] for m in stream.buffer(processed=False))
    expected = sorted(list(range(n)) + ([m['i'] for m in flaky.failed_batch] if after else []))
    assert values == expected, 'every message at least once; only the un-committed batch twice'


# -- bad payloads -------------------------------------------------------------
def test_non_json_payloads_are_dead_lettered_and_the_rest_arrives(kafka_bootstrap):
    topic = unique('bad')
    payloads = [b'{"i": 0}', b'not json', b'{"i": 1}', b'[1, 2]', b'\xff\xfe', b'{"i": 2}']
    produce(kafka_bootstrap, topic, payloads, partition=0)
    stream = mb.stream(unique('bad'))
    source = stream.attach(KafkaSource(topic, urls=[kafka_bootstrap]))
    try:
        wait_until(lambda: waiting(stream) == 3 and len(stream.dead_letters()) == 3, timeout=JOIN,
                   message='good messages and dead letters')
        wait_until(lambda: committed(kafka_bootstrap, source.group_id, topic) == len(payloads), timeout=10,
                   message='dead-lettered payloads committed too')
    finally:
        stream.stop()
    assert [m.data for m in stream.buffer(processed=False)] == [{'i': 0}, {'i': 1}, {'i': 2}]
    dead = stream.dead_letters()
    assert [d.data['origin'] for d in dead] == [f'kafka://{topic}/0/{offset}' for offset in (1, 3, 4)]
    assert dead[0].data['payload'] == 'not json' and 'not JSON' in dead[0].error
    assert dead[1].data['payload'] == '[1, 2]' and 'not an object' in dead[1].error
    assert dead[2].data['payload_base64'] == '//4='


# -- the sink -----------------------------------------------------------------
def test_sink_expands_lists_sets_keys_and_sends_whole_values(kafka_bootstrap):
    topic = unique('sink')
    sink = KafkaSink(topic, urls=[kafka_bootstrap], key='k', timeout=10)
    whole = KafkaSink(topic, urls=kafka_bootstrap, expand=False, timeout=10)
    try:
        assert sink.put([{'k': 'a', 'v': 1}, {'k': 'b', 'v': 2}]) == 2
        assert sink.put([]) == 0
        assert whole.put([{'v': 3}, {'v': 4}]) == 1
        with pytest.raises(InvalidMessage):
            sink.put([{'v': 5}, {'v': object()}])  # refused before anything is sent
        records = read_topic(kafka_bootstrap, topic, 3)
    finally:
        sink.close()
        whole.close()
    assert len(records) == 3
    got = sorted((r.key, json.loads(r.value)) for r in records if r.key)
    assert got == [(b'a', {'k': 'a', 'v': 1}), (b'b', {'k': 'b', 'v': 2})]
    assert [json.loads(r.value) for r in records if not r.key] == [[{'v': 3}, {'v': 4}]]


def test_failing_sink_raises_and_the_window_is_retried_then_dead_lettered(tmp_path):
    address = f'127.0.0.1:{free_port()}'
    topic = unique('nowhere')
    sink = KafkaSink(topic, urls=[address], timeout=0.5)  # no broker needed to build it
    started = time.monotonic()
    with pytest.raises(KafkaSinkError) as failure:
        sink.put([{'i': 1}])
    assert time.monotonic() - started < 10
    assert isinstance(failure.value, MinibatchError) and isinstance(failure.value, ConnectionError)
    assert topic in str(failure.value) and address in str(failure.value)

    url = f'sqlite:///{tmp_path}/sink.db'
    stream = mb.stream(unique('sinkfail'), url=url)
    stream.append([{'i': 0}, {'i': 1}])
    calls = []
    emitter = streaming(stream.name, size=2, url=url, executor='inline', sink=sink, max_attempts=2,
                        retry_backoff=0.05).make(lambda window: calls.append(len(window.data)))
    try:
        drive(emitter, lambda: len(stream.dead_letters()) == 2, timeout=30)
    finally:
        emitter.close()
    assert calls == [2, 2], 'the window was tried max_attempts times'
    dead = stream.dead_letters()
    assert [d.data for d in dead] == [{'i': 0}, {'i': 1}]
    assert all('KafkaSinkError' in d.error and topic in d.error for d in dead)
    assert stream.stats()['available'] == 0


# -- the source when the broker is gone ---------------------------------------
def test_source_without_broker_logs_one_line_per_attempt_and_stops(caplog):
    caplog.set_level(logging.WARNING, logger='minibatch.contrib')
    address = f'127.0.0.1:{free_port()}'
    stream = mb.stream(unique('nobroker'))
    io_threads = len(kafka_io_threads())
    source = stream.attach(KafkaSource(unique('t'), urls=[address], bootstrap_timeout_ms=300))
    thread = source_thread(stream)

    def ours():
        return [r for r in caplog.records if r.name == 'minibatch.contrib']
    wait_until(lambda: len(ours()) >= 2, timeout=10, message='two failed connection attempts logged')
    records = ours()
    assert all('\n' not in r.getMessage() and not r.exc_info for r in records), 'one line each'
    assert all(address in r.getMessage() and stream.name in r.getMessage() for r in records)
    assert source.failures >= len(records) >= 2

    stream.append({'still': 'usable'})
    assert waiting(stream) == 1
    started = time.monotonic()
    stream.stop()
    thread.join(5)
    assert not thread.is_alive(), 'stream.stop() ended the source'
    assert time.monotonic() - started < 5
    # kafka-python leaves a thread behind per failed connect unless the source closes it
    wait_until(lambda: len(kafka_io_threads()) <= io_threads, timeout=5, message='no kafka I/O thread left')


def test_source_options_are_checked_where_given():
    # 0.6's default, so 0.6 programs may pass it: overridden (the source commits after each append)
    assert KafkaSource('t', enable_auto_commit=True).configs['enable_auto_commit'] is False
    with pytest.raises(ConfigurationError, match='group_id'):
        KafkaSource('t', group_id=None)
    with pytest.raises(ConfigurationError):
        KafkaSource('')
    source = KafkaSource('orders', urls='a:1,b:2', group_id='mine', auto_offset_reset='latest')
    assert source.urls == ['a:1', 'b:2'] and source.group_id == 'mine'
    assert source.configs['auto_offset_reset'] == 'latest' and source.configs['enable_auto_commit'] is False
    assert KafkaSource('orders').urls == ['localhost:9092']
    with pytest.raises(ConfigurationError):
        KafkaSink('orders', timeout=0)
