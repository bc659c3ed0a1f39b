"""MQTT in, MQTT out: a topic feeds a stream, a consumer publishes its results to another topic.

    MINIBATCH_MQTT=mqtt://localhost:1883 python examples/mqtt_roundtrip.py

Needs paho-mqtt (``pip install 'minibatch[mqtt]'``) and an MQTT broker
(MINIBATCH_MQTT, default mqtt://localhost:1883; ``mqtt://user:password@host:port``
with credentials). Each run uses topics of its own under ``minibatch-example/<run>/``:

1. an MQTTSource subscribes to ``.../readings`` and appends each reading to
   the stream 'mqtt-roundtrip' as ``{'topic': ..., 'payload': <the reading>,
   'qos': ..., 'retain': ...}`` (as minibatch 0.6 did; ``envelope=False``
   appends the reading alone); it acknowledges a message to the broker only
   once the stream has it. A payload that is not JSON goes to the stream's
   dead letters;
2. a plain paho client publishes ten temperature readings and one bad payload;
3. a consumer averages windows of five readings; an MQTTSink publishes each
   average to ``.../averages`` and returns only when the broker acknowledged it;
4. a plain paho client subscribed to ``.../averages`` prints what arrives.

The stream lives in the embedded store (or MINIBATCH_URL). It stops by itself.
"""
import json
import logging
import os
import sys
import threading
import time
import uuid

import paho.mqtt.client as paho

import minibatch as mb
from minibatch.contrib.mqtt import MQTTSink, MQTTSource, parse_url

BROKER = os.environ.get('MINIBATCH_MQTT', 'mqtt://localhost:1883')
# the source logs the rejected payload as a warning; show it
logging.basicConfig(level=logging.WARNING, format='  log: %(message)s')

RUN = uuid.uuid4().hex[:8]
TOPIC_IN, TOPIC_OUT = f'minibatch-example/{RUN}/readings', f'minibatch-example/{RUN}/averages'


def plain_client(subscribe=None):
    """A paho client of our own, connected (and subscribed to ``subscribe``), its loop in a thread."""
    host, port, user, password = parse_url(BROKER)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    if user is not None:
        client.username_pw_set(user, password)
    client.received = []
    ready = threading.Event()
    client.on_message = lambda c, u, message: client.received.append(json.loads(message.payload))
    client.on_subscribe = lambda *args: ready.set()
    try:
        client.connect(host, port)
    except OSError as exc:
        sys.exit(f'cannot reach an MQTT broker at {BROKER} (set MINIBATCH_MQTT): {exc}')
    client.loop_start()
    if subscribe:
        client.subscribe(subscribe, qos=1)
        if not ready.wait(10):
            sys.exit(f'{BROKER} did not confirm the subscription to {subscribe}')
    return client


def average(window):
    # runs once per window of five readings; the return value goes to the sink
    readings = [m['payload'] for m in window.data]  # each message: {'topic', 'payload', 'qos', 'retain'}
    temps = [r['celsius'] for r in readings]
    return {'sensors': sorted(r['sensor'] for r in readings), 'mean_celsius': round(sum(temps) / len(temps), 2)}


def main():
    stream = mb.stream('mqtt-roundtrip')
    stream.clear()
    stream.purge_dead_letters()
    source = stream.attach(MQTTSource(BROKER, TOPIC_IN))
    # MQTT does not keep messages for a subscriber that is not there yet: publish only once subscribed
    if not source.ready.wait(10):
        sys.exit(f'the source could not subscribe at {BROKER}: {source.last_error}')

    reader = plain_client(subscribe=TOPIC_OUT)
    sink = MQTTSink(BROKER, TOPIC_OUT, timeout=10)
    consumer = mb.streaming(stream.name, size=5, executor='inline', sink=sink, blocking=False)(average)

    publisher = plain_client()
    for i in range(10):
        publisher.publish(TOPIC_IN, json.dumps({'sensor': i, 'celsius': 20 + i / 2}), qos=1).wait_for_publish(10)
    publisher.publish(TOPIC_IN, b'this is not JSON', qos=1).wait_for_publish(10)
    print(f'published 10 readings and 1 bad payload to {TOPIC_IN}')

    deadline = time.monotonic() + 20
    try:
        while len(reader.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stream.stop()          # ends the source (and its MQTT connection)
        consumer.stop()
        consumer.thread.join()
        sink.close()
        for client in (publisher, reader):
            client.disconnect()
            client.loop_stop()
    for result in sorted(reader.received, key=lambda r: r['sensors']):
        print(f'{TOPIC_OUT}: sensors {result["sensors"]} mean {result["mean_celsius"]} C')
    for dead in stream.dead_letters():
        print(f'dead letter from {dead.data["origin"]}: {dead.data["payload"]!r} ({dead.error})')
    if len(reader.received) != 2:
        sys.exit(f'expected 2 averages, got {len(reader.received)}')


if __name__ == '__main__':
    main()
