"""MQTTSource and MQTTSink against a real mosquitto broker.

The shared broker comes from the ``mqtt_url`` fixture; the broker-restart test
starts a mosquitto of its own on a free loopback port so that it can kill it.
Every test uses topics of its own, so tests never see each other's messages.
"""
import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest

import minibatch as mb
from minibatch.contrib.mqtt import MQTTPublishError, MQTTSink, MQTTSource, parse_url
from minibatch.errors import ConfigurationError, InvalidMessage
from tests.conftest import require_module
from tests.helpers import attach, free_port, settled, stop, wait_until

mqtt = require_module('paho.mqtt.client', "pip install 'minibatch[mqtt]'")


def unique(prefix):
    return f'mbtest/{prefix}/{uuid.uuid4().hex[:8]}'


class Client:
    """A raw paho client (publisher and/or subscriber) for the test's side of the broker."""

    def __init__(self, url, subscribe=None):
        host, port, _, _ = parse_url(url)
        self.received = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, msg: self.received.append(msg.payload)
        self.client.on_subscribe = lambda *args: subscribed.set()
        if subscribe:
            self.client.on_connect = lambda c, *args: c.subscribe(subscribe, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        if subscribe:
            assert subscribed.wait(5), f'no SUBACK for {subscribe}'

    def publish(self, topic, payload):
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def client(mqtt_url):
    clients = []

    def make(subscribe=None):
        clients.append(Client(mqtt_url, subscribe))
        return clients[-1]
    yield make
    for c in clients:
        c.close()


def end_session(url, client_id):
    """Connect once with a clean session, so that the shared broker drops the durable session ``client_id``."""
    host, port, _, _ = parse_url(url)
    cleaner = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    cleaner.connect(host, port)
    cleaner.disconnect()


# -- configuration (no broker needed) -----------------------------------------
@pytest.mark.parametrize('url', ['tcp://localhost:1883', 'mqtts://localhost', 'mqtt://', ':1883',
                                 'mqtt://localhost:notaport', 'mqtt://localhost:1883/topic', None])
def test_bad_url_is_refused(url):
    with pytest.raises(ConfigurationError):
        MQTTSource(url, 'topic')
    with pytest.raises(ConfigurationError):
        MQTTSink(url, 'topic')


def test_url_parts_and_repr_without_password():
    assert parse_url('mqtt://bob:s%40cret@broker') == ('broker', 1883, 'bob', 's@cret')
    assert parse_url('mqtt://127.0.0.1:11883') == ('127.0.0.1', 11883, None, None)
    # 0.6 programs name the broker without a scheme
    assert parse_url('localhost') == ('localhost', 1883, None, None)
    assert parse_url('127.0.0.1:11883') == ('127.0.0.1', 11883, None, None)
    source = MQTTSource('mqtt://bob:secret@broker:1884', 'a/#')
    assert 'secret' not in repr(source) and 'broker:1884' in repr(source)
    assert 'secret' not in repr(MQTTSink('mqtt://bob:secret@broker', 'a/b'))


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigurationError, match='qos'):
        MQTTSource('mqtt://localhost', 't', qos=3)
    with pytest.raises(ConfigurationError, match='topic'):
        MQTTSource('mqtt://localhost', '')
    with pytest.raises(ConfigurationError, match='manual_ack'):
        MQTTSource('mqtt://localhost', 't', manual_ack=False)
    with pytest.raises(ConfigurationError, match='paho Client arguments'):
        MQTTSource('mqtt://localhost', 't', no_such_option=1)
    with pytest.raises(ConfigurationError, match='envelope'):
        MQTTSource('mqtt://localhost', 't', envelope='no')


# -- against the broker ----------------------------------------------------------
def test_roundtrip_publisher_source_stream_consumer_sink_subscriber(mqtt_url, client):
    """Every payload published goes through the stream and the sink and arrives once, unchanged."""
    topic_in, topic_out = unique('in'), unique('out')
    subscriber = client(subscribe=topic_out)
    stream = mb.stream(unique('stream').replace('/', '-'))
    source = attach(stream, MQTTSource(mqtt_url, topic_in))
    sink = MQTTSink(mqtt_url, topic_out)

    def double(window):
        payloads = [m['payload'] for m in window.data]
        return [{'n': p['n'], 'double': 2 * p['n'], 'text': p['text']} for p in payloads]

    emitter = mb.streaming(stream.name, size=5, executor='inline', blocking=False, sink=sink)(double)
    try:
        publisher = client()
        sent = [{'n': i, 'text': f'message é {i}'} for i in range(40)]
        for message in sent:
            publisher.publish(topic_in, message)
        wait_until(lambda: len(subscriber.received) >= len(sent), timeout=15,
                   message='all results at the subscriber')
        wait_until(lambda: settled(stream), message='every message committed')
    finally:
        emitter.stop()
        emitter.thread.join(10)
        stop(stream, source)
        sink.close()
    results = sorted((json.loads(payload) for payload in subscriber.received), key=lambda r: r['n'])
    assert results == [{'n': m['n'], 'double': 2 * m['n'], 'text': m['text']} for m in sent]
    assert stream.dead_letters() == []


@pytest.mark.parametrize('envelope', [False, True])
def test_payloads_that_cannot_be_messages_are_dead_lettered(mqtt_url, client, envelope):
    """Not JSON, or not UTF-8: dead letters in both modes; a JSON array only without the envelope.

    In the envelope (the default, as 0.6) any JSON value is a payload; with
    ``envelope=False`` the payload is the message and must be a JSON object.
    """
    topic = unique('bad')
    stream = mb.stream('mqtt-bad')
    source = attach(stream, MQTTSource(mqtt_url, topic + '/#', envelope=envelope))
    publisher = client()
    expected_dead, expected_messages = (3, 1) if not envelope else (2, 2)
    try:
        publisher.publish(topic + '/a', b'not json')
        publisher.publish(topic + '/b', b'[1, 2]')
        publisher.publish(topic + '/c', b'\xff\xfe')
        publisher.publish(topic + '/d', {'ok': True})
        wait_until(lambda: len(stream.dead_letters()) == expected_dead and
                   stream.stats()['available'] == expected_messages, timeout=10,
                   message=f'{expected_dead} dead letters and {expected_messages} messages')
    finally:
        stop(stream, source)
    host, port, _, _ = parse_url(mqtt_url)
    dead = {m.data['origin']: m for m in stream.dead_letters()}
    origin = f'mqtt://{host}:{port}/{topic}'
    assert dead[origin + '/a'].data['payload'] == 'not json' and 'not JSON' in dead[origin + '/a'].error
    assert 'payload_base64' in dead[origin + '/c'].data
    stored = [m.data for m in stream.buffer(processed=False)]
    if envelope:
        assert sorted((m['topic'], m['payload'], m['qos'], m['retain']) for m in stored) == [
            (topic + '/b', [1, 2], 1, False), (topic + '/d', {'ok': True}, 1, False)]
    else:
        assert dead[origin + '/b'].data['payload'] == '[1, 2]' and 'not an object' in dead[origin + '/b'].error
        assert stored == [{'ok': True}]


def test_sink_to_a_dead_port_fails_the_window_until_it_is_dead_lettered():
    sink = MQTTSink(f'mqtt://127.0.0.1:{free_port()}', 'nowhere', timeout=2)
    with pytest.raises(MQTTPublishError, match='refused'):
        sink.put({'a': 1})
    stream = mb.stream('mqtt-sink-dead')
    stream.append({'a': 1})
    emitter = mb.streaming(stream.name, size=1, executor='inline', blocking=False, sink=sink,
                           max_attempts=2, retry_backoff=0.05)(lambda window: window.data)
    try:
        dead = wait_until(stream.dead_letters, timeout=10, message='the window dead-lettered')
    finally:
        emitter.stop()
        emitter.thread.join(10)
    assert dead[0].data == {'a': 1} and dead[0].attempts == 2
    assert 'MQTTPublishError' in dead[0].error


def test_sink_times_out_on_a_broker_that_never_answers():
    """A listener that accepts and stays silent (a hung broker): put raises after its timeout."""
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        sink = MQTTSink(f'mqtt://127.0.0.1:{server.getsockname()[1]}', 'silent', timeout=0.5)
        started = time.monotonic()
        with pytest.raises(MQTTPublishError, match='CONNACK'):
            sink.put([{'a': 1}])
        assert time.monotonic() - started < 3
        sink.close()


def test_sink_reuses_its_connection_and_reconnects_after_close(mqtt_url, client):
    topic = unique('reuse')
    subscriber = client(subscribe=topic)
    sink = MQTTSink(mqtt_url, topic)
    sink.put({'i': 0})
    first = sink._client
    sink.put([{'i': 1}, {'i': 2}])
    assert sink._client is first
    sink.close()
    with pytest.raises(InvalidMessage):
        sink.put([{'i': 'sent'}, {'i': object()}])  # nothing of the window is sent
    sink.put({'i': 3, 'at': datetime.datetime(2024, 5, 1, 12, 0)})
    sink.close()
    wait_until(lambda: len(subscriber.received) == 4, message='4 messages')
    assert [json.loads(p)['i'] for p in subscriber.received] == [0, 1, 2, 3]
    assert json.loads(subscriber.received[-1])['at'] == '2024-05-01T12:00:00'


def test_source_on_a_dead_port_logs_one_line_and_stops(caplog):
    stream = mb.stream('mqtt-source-dead')
    source = MQTTSource(f'mqtt://127.0.0.1:{free_port()}', 'x')
    source.retry_delay = 0.1
    with caplog.at_level(logging.WARNING, logger='minibatch.contrib'):
        stream.attach(source)
        wait_until(lambda: source.failures >= 2, message='two failed attempts')
        stream.append({'still': 'usable'})  # the stream works while its source cannot connect
        assert [m.data for m in stream.buffer(processed=False)] == [{'still': 'usable'}]
        stop(stream, source, within=2.0)
    lines = [r for r in caplog.records if r.name == 'minibatch.contrib']
    assert lines, 'no failure was logged'
    for record in lines:  # one line per failure: no traceback, the address and the reason in it
        text = record.getMessage()
        assert '\n' not in text and record.exc_info is None
        assert 'ConnectionRefusedError' in text and f'127.0.0.1:{source.port}' in text


def test_source_waiting_for_a_silent_broker_stops_promptly():
    """A listener that never answers the CONNECT: stop() does not wait for the 10 s handshake timeout."""
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        stream = mb.stream('mqtt-source-silent')
        source = MQTTSource(f'mqtt://127.0.0.1:{server.getsockname()[1]}', 'x')
        stream.attach(source)
        server.settimeout(5)
        peer, _ = server.accept()
        with peer:
            assert peer.recv(1) == b'\x10'  # the CONNECT packet: the source now waits for a CONNACK
            assert not source.ready.is_set() and source.failures == 0
            stop(stream, source, within=1.0)


class FailingAppends:
    """The stream, except that the first ``failures`` appends raise (a store outage)."""

    def __init__(self, stream, failures=1):
        self.stream, self.failures = stream, failures

    def append(self, data):
        if self.failures:
            self.failures -= 1
            raise ConnectionError('store outage (injected)')
        return self.stream.append(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def test_message_is_acknowledged_only_after_it_was_stored(mqtt_url, client):
    """With a durable session, a message whose append failed is delivered again, not lost.

    Had paho acknowledged it on receipt, the broker would not send it again.
    """
    topic, client_id = unique('ack'), 'mbtest-' + uuid.uuid4().hex[:8]
    stream = mb.stream('mqtt-ack')
    source = MQTTSource(mqtt_url, topic, client_id=client_id)
    source.retry_delay = 0.05
    thread = threading.Thread(target=source.stream, args=(FailingAppends(stream),), daemon=True)
    thread.start()
    try:
        assert source.ready.wait(10)
        client().publish(topic, {'k': 'v'})
        wait_until(lambda: stream.stats()['available'] >= 1, timeout=10, message='the message stored')
    finally:
        source.cancel()
        thread.join(5)
        end_session(mqtt_url, client_id)
    assert 'store outage' in source.last_error
    assert [m.data['payload'] for m in stream.buffer(processed=False)] == [{'k': 'v'}]


@pytest.mark.parametrize('envelope', [True, False])
def test_messages_of_one_read_are_one_write_acknowledged_after_it(envelope):
    """In both modes: one append (then a flush) for the messages of one read, the acks only after it."""
    calls = []

    class Recorder:
        name = 'recorder'

        def append(self, docs):
            calls.append(('append', docs))

        def flush(self):
            calls.append(('flush',))

        def reject(self, record, reason):
            calls.append(('reject', record['payload']))

    class Ack:
        def ack(self, mid, qos):
            calls.append(('ack', mid))

    def message(mid, payload):
        msg = mqtt.MQTTMessage(mid=mid, topic=b'a/b')
        msg.payload, msg.qos = payload, 1
        return msg

    source = MQTTSource('mqtt://localhost', 'a/#', envelope=envelope)
    source._store(Ack(), Recorder(), [message(1, b'{"n": 1}'), message(2, b'oops'), message(3, b'{"n": 3}')])
    docs = [{'n': 1}, {'n': 3}]
    if envelope:
        docs = [{'topic': 'a/b', 'payload': doc, 'qos': 1, 'retain': False} for doc in docs]
    assert calls == [('reject', 'oops'), ('append', docs), ('flush',), ('ack', 1), ('ack', 2), ('ack', 3)]


def test_durable_session_gets_what_was_published_while_the_source_was_stopped(mqtt_url, client):
    """With a client_id the broker queues QoS 1 messages for the stopped source and delivers them later."""
    topic, client_id = unique('durable'), 'mbtest-' + uuid.uuid4().hex[:8]
    stream = mb.stream('mqtt-durable')
    publisher = client()
    first = attach(stream, MQTTSource(mqtt_url, topic, client_id=client_id))
    publisher.publish(topic, {'n': 1})
    wait_until(lambda: stream.stats()['available'] == 1, message='the first message')
    stop(stream, first)

    publisher.publish(topic, {'n': 2})  # nobody is connected: the broker keeps it for the session
    second = attach(stream, MQTTSource(mqtt_url, topic, client_id=client_id))
    try:
        wait_until(lambda: stream.stats()['available'] == 2, message='the message sent while stopped')
    finally:
        stop(stream, second)
    assert [m.data['payload']['n'] for m in stream.buffer(processed=False)] == [1, 2]
    end_session(mqtt_url, client_id)


# -- broker restart --------------------------------------------------------------
class Mosquitto:
    """A mosquitto of the test's own on a loopback port, to be killed and restarted."""

    def __init__(self, tmp_path):
        binary = shutil.which('mosquitto') or ('/usr/sbin/mosquitto' if os.path.exists('/usr/sbin/mosquitto')
                                               else None)
        if binary is None:
            if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
                pytest.fail('mosquitto is not installed under CI')
            pytest.skip('mosquitto is not installed')
        self.binary, self.port = binary, free_port()
        self.config = tmp_path / 'mosquitto.conf'
        self.config.write_text(f'listener {self.port} 127.0.0.1\nallow_anonymous true\n')
        self.proc = None

    @property
    def url(self):
        return f'mqtt://127.0.0.1:{self.port}'

    def start(self):
        self.proc = subprocess.Popen([self.binary, '-c', str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.accepts, timeout=10, message='mosquitto listening', alive=[self.proc])

    def accepts(self):
        try:
            socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_source_resumes_after_the_broker_restarts(tmp_path, caplog):
    broker = Mosquitto(tmp_path)
    broker.start()
    stream = mb.stream('mqtt-restart')
    source = MQTTSource(broker.url, 'restart/t')
    source.retry_delay = 0.1
    publisher = None
    try:
        with caplog.at_level(logging.WARNING, logger='minibatch.contrib'):
            attach(stream, source)
            publisher = Client(broker.url)
            publisher.publish('restart/t', {'phase': 'before'})
            wait_until(lambda: stream.stats()['available'] == 1, message='the first message')
            publisher.close()

            broker.kill()
            wait_until(lambda: not source.ready.is_set(), message='the source noticing the broker gone')
            broker.start()
            assert source.ready.wait(10), 'the source did not subscribe again'

            publisher = Client(broker.url)
            publisher.publish('restart/t', {'phase': 'after'})
            wait_until(lambda: stream.stats()['available'] == 2, message='the message sent after the restart')
    finally:
        if publisher is not None:
            publisher.close()
        stop(stream, source)
        broker.kill()
    assert [m.data['payload']['phase'] for m in stream.buffer(processed=False)] == ['before', 'after']
    lost = [r.getMessage() for r in caplog.records if 'failed' in r.getMessage()]
    assert lost and all('\n' not in line for line in lost)
