"""Programs written for minibatch 0.6 against the ready-made sources and sinks.

0.6 let users hand their own clients to a source or sink by setting a private
attribute (``_consumer``, ``_producer``, ``_client``); its test suite did so
with ``MagicMock`` doubles, and so do users' tests. The tests here that check
those hooks use doubles too, because a double is what the feature is for; the
tests of what such a client then does with a broker use the real brokers the
test command starts.
"""
import json
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from unittest.mock import MagicMock

import pytest

import minibatch as mb
from minibatch import streaming
from tests.helpers import wait_until


def unique(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


def drive(emitter, condition, timeout=10):
    """Run consumer rounds until ``condition()`` holds."""
    def step():
        emitter.run(blocking=False)
        return condition()
    return wait_until(step, timeout=timeout, interval=0.01, message='the consumer to finish')


def messages(stream):
    return [m.data for m in stream.buffer()]


# -- Kafka ---------------------------------------------------------------------
def test_kafka_source_reads_a_consumer_set_as_underscore_consumer(store_url):
    """0.6: ``source._consumer = double``; the double is iterated and each record's value appended."""
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSource
    record = MagicMock()
    record.value = {'foo': 'bar'}
    consumer = MagicMock()
    consumer.__iter__.return_value = [record]
    source = KafkaSource('topic')
    source._consumer = consumer
    stream = mb.stream(unique('kafka'), url=store_url)
    stream.attach(source)
    assert source.stopped.wait(10), 'the source ends when the consumer has no more records'
    assert messages(stream) == [{'foo': 'bar'}], 'appended once, not again on a retry'
    consumer.commit.assert_called()
    consumer.close.assert_not_called()


def test_kafka_source_takes_a_consumer_keyword_and_keeps_it_after_a_failure(tmp_path):
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSource
    record = MagicMock()
    record.value = b'{"n": 1}'
    calls = []

    def records():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError('broker went away (injected)')
        return iter([record])

    consumer = MagicMock()
    consumer.__iter__.side_effect = records
    source = KafkaSource('topic', consumer=consumer)
    source.retry_delay = 0.01
    assert source.consumer is consumer and source.injected
    stream = mb.stream(unique('kafka'), url=f'sqlite:///{tmp_path}/s.db')
    stream.attach(source)
    assert source.stopped.wait(10)
    assert len(calls) == 2 and source.consumer is consumer, 'the same consumer, read again after the failure'
    assert messages(stream) == [{'n': 1}]


def test_kafka_source_with_a_configured_kafka_consumer_of_the_users(kafka_bootstrap, store_url):
    """A real KafkaConsumer set as ``_consumer`` is polled and committed by the source, never closed."""
    kafka = pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSource
    topic, group = unique('own'), unique('group')
    producer = kafka.KafkaProducer(bootstrap_servers=[kafka_bootstrap])
    try:
        for i in range(3):
            producer.send(topic, value=json.dumps({'i': i}).encode()).get(timeout=10)
    finally:
        producer.close()
    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=[kafka_bootstrap], group_id=group,
                                   auto_offset_reset='earliest', enable_auto_commit=False,
                                   session_timeout_ms=6000, heartbeat_interval_ms=2000)
    try:
        source = KafkaSource(topic, urls=[kafka_bootstrap])
        source._consumer = consumer
        stream = mb.stream(unique('kafka'), url=store_url)
        stream.attach(source)
        wait_until(lambda: len(messages(stream)) == 3, timeout=30, message='3 messages')
        stream.stop()
        assert source.stopped.wait(5)
        assert sorted(m['i'] for m in messages(stream)) == [0, 1, 2]
        partitions = consumer.assignment()
        assert sum(consumer.committed(tp) or 0 for tp in partitions) == 3, 'committed by the source'
        assert source.consumer is consumer, 'still the user\'s consumer, not closed or replaced'
    finally:
        consumer.close()


def test_kafka_sink_sends_as_0_6_did_to_a_producer_set_as_underscore_producer(store_url):
    """0.6's test: the emitter's sink calls ``producer.send('test', value={'foo': 'baz'})``."""
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSink
    stream = mb.stream(unique('kafka'), url=store_url)
    stream.append(dict(foo='baz'))
    sink = KafkaSink('test')
    producer = MagicMock()
    sink._producer = producer
    emitter = streaming(stream.name, size=1, url=store_url, executor='inline', sink=sink).make(lambda w: w.data)
    try:
        drive(emitter, lambda: emitter.stats['committed'] >= 1)
    finally:
        emitter.close()
    producer.send.assert_called_with('test', value={'foo': 'baz'})
    producer.send.return_value.get.assert_called()  # the sink waited for the acknowledgement
    sink.close()
    producer.close.assert_not_called()


def test_kafka_sink_call_shapes():
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSink
    producer = MagicMock()
    sink = KafkaSink('t', producer=producer)
    assert sink.producer is producer
    assert sink.put([{'a': 1}, {'a': 2}]) == 2
    assert [c.args + tuple(sorted(c.kwargs.items())) for c in producer.send.call_args_list] == [
        ('t', ('value', {'a': 1})), ('t', ('value', {'a': 2}))]
    producer.reset_mock()
    sink.put(({'a': 3},), topic='other')  # 0.6: put(message, topic=None); tuples expand too
    producer.send.assert_called_once_with('other', value={'a': 3})
    producer.reset_mock()
    KafkaSink('t', key='a', producer=producer).put({'a': 4})
    producer.send.assert_called_once_with('t', value={'a': 4}, key=b'4')


# -- MQTT ----------------------------------------------------------------------
def test_mqtt_source_on_message_appends_to_the_attached_stream(store_url, caplog):
    """0.6's test: a client double as ``_client``; ``on_message`` called directly appends 0.6's envelope."""
    pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTSource
    caplog.set_level(logging.ERROR, 'minibatch.contrib')  # the double never answers the SUBACK wait: retries
    source = MQTTSource('localhost', 'TEST/#')
    client = MagicMock()
    client.loop_forever = lambda *args: time.sleep(10)
    source._client = client
    stream = mb.stream(unique('mqtt'), url=store_url)
    stream.attach(source)
    stream.append = MagicMock()
    message = MagicMock()
    message.payload = json.dumps({'foo': 'bar'}).encode('utf-8')
    source.on_message(client, {}, message)
    stream.append.assert_called_with([{'topic': message.topic, 'payload': {'foo': 'bar'},
                                       'qos': message.qos, 'retain': message.retain}])
    client.ack.assert_called_with(message.mid, message.qos)
    stream.stop()
    assert source.stopped.wait(5)
    assert source.client is client, 'the double was never replaced by a client of our own'


def test_mqtt_sink_publishes_as_0_6_did_to_a_client_set_as_underscore_client():
    """0.6's test, word for word in its assertion: ``publish('TEST/#', json.dumps(...))``, nothing more."""
    pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTSink
    sink = MQTTSink('localhost', 'TEST/#')
    client = MagicMock()
    client.loop_forever = lambda *args: time.sleep(10)
    sink._client = client
    sink.put({'foo': 'bar'})
    client.publish.assert_called_with('TEST/#', json.dumps(dict(foo='bar')))
    assert sink.client is client
    sink = MQTTSink('localhost:1883', 't', qos=1, retain=True, client=client)
    sink.put({'foo': 'baz'})
    client.publish.assert_called_with('t', json.dumps(dict(foo='baz')), qos=1, retain=True)


def bare(mqtt_url):
    """``host:port`` of the test broker, as 0.6 programs name it."""
    return mqtt_url.split('://', 1)[1]


@contextmanager
def mqtt_subscriber(mqtt_url, topic):
    import paho.mqtt.client as mqtt
    host, port = bare(mqtt_url).rsplit(':', 1)
    received, subscribed = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: received.append(json.loads(msg.payload))
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
    client.connect(host, int(port))
    client.loop_start()
    try:
        assert subscribed.wait(5)
        yield received, client
    finally:
        client.disconnect()
        client.loop_stop()


def test_mqtt_bare_host_port_and_a_client_of_the_users_against_the_broker(mqtt_url, store_url):
    """``MQTTSource('host:port', topic, client=...)`` with a paho client using version 1 callbacks."""
    mqtt = pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTSink, MQTTSource
    topic = f'mbtest/compat/{uuid.uuid4().hex[:8]}'
    own = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, manual_ack=True)
    source = MQTTSource(bare(mqtt_url), topic, client=own)
    stream = mb.stream(unique('mqtt'), url=store_url)
    stream.attach(source)
    assert source.ready.wait(10), source.last_error
    sink = MQTTSink(bare(mqtt_url), topic)  # our own client: QoS 1, waits for the PUBACK
    try:
        sink.put([{'i': 1}, {'i': 2}])
        wait_until(lambda: len(messages(stream)) == 2, message='2 messages in the stream')
    finally:
        sink.close()
        stream.stop()
    assert source.stopped.wait(5)
    assert sorted(m['payload']['i'] for m in messages(stream)) == [1, 2]
    assert source.client is own


def test_mqtt_source_appends_0_6_message_envelopes_a_0_6_consumer_reads(mqtt_url, store_url):
    """A 0.6 program against mosquitto: each message is ``{'topic', 'payload', 'qos', 'retain'}``.

    The consumer reads ``window.data[i]['payload']`` and the other keys as 0.6
    programs do. Any JSON value is a payload (0.6 appended what ``json.loads``
    returned); what is not JSON goes to the dead letters.
    """
    mqtt = pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTSource
    topic = f'mbtest/compat/{uuid.uuid4().hex[:8]}'
    host, port = bare(mqtt_url).rsplit(':', 1)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(host, int(port))
    publisher.loop_start()

    def publish(subtopic, payload, qos=1, retain=False):
        info = publisher.publish(f'{topic}/{subtopic}', payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()

    seen = []

    def consumer(window):  # as written for 0.6
        for i in range(len(window.data)):
            seen.append((window.data[i]['topic'], window.data[i]['payload'],
                         window.data[i]['qos'], window.data[i]['retain']))

    stream = mb.stream(unique('mqtt'), url=store_url)
    emitter = streaming(stream.name, size=1, url=store_url, executor='inline').make(consumer)
    source = None
    try:
        # retained before the source subscribes: the broker hands it over with the retain flag set
        publish('retained', json.dumps({'state': 'on'}), retain=True)
        source = MQTTSource(bare(mqtt_url), topic + '/#')  # 0.6's call: no options
        stream.attach(source)
        drive(emitter, lambda: len(seen) == 1)
        publish('a', json.dumps({'foo': 'bar'}), qos=0)
        publish('b', json.dumps([1, 2]))
        publish('c', b'42')
        publish('d', b'not json')
        drive(emitter, lambda: len(seen) == 4 and len(stream.dead_letters()) == 1)
    finally:
        stream.stop()
        emitter.close()
        stopped = source is None or source.stopped.wait(5)
        publish('retained', b'', retain=True)  # an empty retained message clears it on the broker
        publisher.disconnect()
        publisher.loop_stop()
    assert stopped
    assert sorted(seen, key=lambda m: m[0]) == [
        (f'{topic}/a', {'foo': 'bar'}, 0, False),
        (f'{topic}/b', [1, 2], 1, False),
        (f'{topic}/c', 42, 1, False),
        (f'{topic}/retained', {'state': 'on'}, 1, True),
    ]
    [dead] = stream.dead_letters()
    assert dead.data['payload'] == 'not json' and dead.data['origin'].endswith(f'{topic}/d')


def test_mqtt_sink_to_a_wildcard_topic_fails_at_put_with_a_publish_error(mqtt_url):
    pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTPublishError, MQTTSink
    sink = MQTTSink(bare(mqtt_url), 'TEST/#')  # accepted where given, as in 0.6
    try:
        with pytest.raises(MQTTPublishError, match='wildcard'):
            sink.put({'foo': 'bar'})
    finally:
        sink.close()


# -- Celery --------------------------------------------------------------------
class AppShapedLikeCelery:
    """Not a celery.Celery: ``connection()``, ``events.Receiver(...)``, ``events.State()``, as 0.6 used them.

    The receiver's ``capture()`` passes each of ``events`` to every handler it
    was given, the way 0.6's own test double did, and then returns.
    """

    def __init__(self, events):
        self.to_send = events
        self.received_handlers = None
        self.events = self  # app.events.Receiver / app.events.State
        self.tasks = {}

    @contextmanager
    def connection(self):
        yield 'a connection'

    def Receiver(self, connection, handlers):
        self.received_handlers = handlers
        return self

    def State(self):
        return self

    def event(self, event):  # State.event
        task = self.tasks.setdefault(event.get('uuid'), MagicMock(state='SUCCESS'))
        task.name = event.get('name', getattr(task, 'name', None))
        return (task, True), 'task'

    def capture(self, limit=None, timeout=None, wakeup=True):
        for event in self.to_send:
            for handler in self.received_handlers.values():
                handler(event)


def test_celery_source_takes_an_app_shaped_object_and_exposes_its_handlers(tmp_path):
    pytest.importorskip('celery')
    from minibatch.contrib.celery import CeleryEventSource
    app = AppShapedLikeCelery([{'name': 'tests.add', 'uuid': '12345', 'runtime': 1.0},
                               {'name': 'no task', 'runtime': 2.0}])
    source = CeleryEventSource(app)
    assert set(source.handlers) == {'*', 'task-succeeded', 'task-failed'}
    assert all(callable(handler) for handler in source.handlers.values())
    stream = mb.stream(unique('celery'), url=f'sqlite:///{tmp_path}/s.db')
    stream.append = MagicMock()
    source.stream(stream)  # returns: the double's capture() returns and stream.stop() is not needed
    assert set(app.received_handlers) == set(source.handlers), 'the receiver got the handlers'
    appended = [c.args[0] for c in stream.append.call_args_list]
    # each of the two recording handlers appended each of the two events
    assert sorted((m['task_event'], str(m['task_id'])) for m in appended) == [
        ('task-failed', '12345'), ('task-failed', 'None'), ('task-succeeded', '12345'), ('task-succeeded', 'None')]
    assert {m['task_name'] for m in appended} == {'tests.add', 'no task'}


# -- MongoDB -------------------------------------------------------------------
def test_mongo_replicaset_source_takes_0_6_arguments(mongo_url):
    """0.6: ``MongoReplicasetSource(collection, size=1, idcol=None, delay=.1)``, positionally too."""
    import pymongo
    from minibatch.contrib.mongodb import MongoReplicasetSource
    client = pymongo.MongoClient(mongo_url)
    try:
        coll = client.get_default_database()['compat']
        source = MongoReplicasetSource(coll, 5, None, .1)
        assert source.size == 5 and source.operations == ('insert',)
        source = MongoReplicasetSource(coll, size=2, idcol='_id', delay=.5)
        assert source.watch_kwargs == {}, 'idcol and delay do not reach collection.watch()'
    finally:
        client.close()
