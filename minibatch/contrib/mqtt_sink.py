"""MQTT as the sink of a consumer: :class:`MQTTSink` (``pip install 'minibatch[mqtt]'``).

``put()`` returns only when the broker has acknowledged every message (QoS 1)
and raises :class:`MQTTPublishError` otherwise, so the window is retried
(see :mod:`minibatch.contrib.mqtt`).
"""
import datetime
import json
import threading
import time

from minibatch.contrib.base import Sink
from minibatch.contrib.mqtt_endpoint import _check_qos, _Endpoint, _paho
from minibatch.errors import InvalidMessage, SinkError


class MQTTPublishError(SinkError):
    """A message could not be published to the MQTT broker (connection failed, refused or timed out)."""


def _json_default(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    raise TypeError(f'{value!r} ({type(value).__name__}) is not JSON serialisable')


class MQTTSink(_Endpoint, Sink):
    """Publish each result as a JSON message to ``topic``.

    ``put(data)`` publishes a dict as one message, a list (or tuple) as one
    message per item (datetimes as ISO 8601 strings; an item may be any JSON
    value), with QoS 1 by default, and returns how many it published once the
    broker acknowledged all of them; ``put([])`` publishes nothing. It raises
    :class:`MQTTPublishError` when the broker cannot be reached, refuses the
    connection, refuses the topic (a topic with wildcards, say), or does not
    acknowledge within ``timeout`` seconds; the window then fails and is
    retried. A message may therefore be published twice, never silently
    dropped (QoS 0 only waits until it was sent).

    Each message is published as ``client.publish(topic, payload)``, with
    ``qos=`` and ``retain=`` added only when they differ from paho's defaults
    (0 and False): the call 0.6 made, which client doubles written for 0.6 expect.

    The connection is opened by the first ``put`` and reused; after a failure
    the sink's own client is dropped (with anything still queued in it) and a
    new one connects at the next ``put``. ``close()`` disconnects. Not
    thread-safe: one consumer calls it.

    A paho client of your own, given as ``client=`` (or set as ``_client``,
    as in 0.6), is used as it is: connected by ``put`` if it is not, never
    replaced, and published to with QoS 0 unless you pass ``qos`` (0.6 did
    not set one); pass ``qos=1`` to wait for the broker's acknowledgements.

    :param url: ``mqtt://[user[:password]@]host[:port]``, or ``host[:port]``
    :param topic: topic to publish to (a topic with wildcards fails at ``put``)
    :param qos: 0, 1 or 2; default 1, or 0 with a client of your own
    :param timeout: seconds ``put`` waits for the connection and for the acknowledgements
    :param retain: publish as retained messages
    :param client: a paho ``Client`` of your own (see above)
    :param client_kwargs: passed to ``paho.mqtt.client.Client``
    """
    own_client_options = {'reconnect_on_failure': False}
    dicts_only = False
    error = MQTTPublishError

    def __init__(self, url, topic, qos=None, timeout=10.0, retain=False, keepalive=60, client=None,
                 **client_kwargs):
        self._qos = None if qos is None else _check_qos(qos)
        self.timeout = float(timeout)
        self.retain = bool(retain)
        self._loop_started = False  # whether put() started the network loop of the client in use
        self._setup(url, topic, keepalive, client_kwargs, client)

    @property
    def qos(self):
        """The QoS of what ``put`` publishes: the one given, else 1 (0 with a client of the user's)."""
        if self._qos is not None:
            return self._qos
        return 0 if self.injected else 1

    def put(self, data):
        """Publish ``data`` (a dict, or a list of dicts) and wait for the broker's acknowledgements.

        Blocking, at most about ``timeout`` seconds. Returns how many messages
        were published. Raises InvalidMessage (a TypeError) when an item is not
        JSON serialisable (nothing is published then), and
        :class:`MQTTPublishError` when publishing fails.
        """
        return super().put(data)

    def prepare(self, item):
        """The JSON text of ``item``; InvalidMessage if it has none (checked before anything is published)."""
        try:
            return json.dumps(item, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f'{self}: cannot send as JSON: {exc}') from exc

    def write(self, payloads):
        """Publish the JSON payloads, then wait until the broker acknowledged each (QoS 1/2) or it was sent."""
        deadline = time.monotonic() + self.timeout
        options = {}
        if self.qos:
            options['qos'] = self.qos
        if self.retain:
            options['retain'] = True
        try:
            client = self._connected()
            infos = []
            for payload in payloads:
                info = client.publish(self.topic, payload, **options)
                rc = getattr(info, 'rc', 0)
                if isinstance(rc, int) and rc:  # a client double may answer with anything
                    raise MQTTPublishError(f'publishing to {self.address}/{self.topic} failed: '
                                           f'{_paho().error_string(rc)}')
                infos.append(info)
            for info in infos:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                if not info.is_published():
                    raise MQTTPublishError(f'{self.address} did not acknowledge the messages to {self.topic!r} '
                                           f'within {self.timeout:.1f}s ({len(infos)} published)')
        except MQTTPublishError:
            self._reset()
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            # paho raises OSError when it cannot connect, RuntimeError/ValueError when a publish failed
            # (ValueError also for a topic with wildcards)
            self._reset()
            raise MQTTPublishError(f'publishing to {self.address}/{self.topic} failed: '
                                   f'{type(exc).__name__}: {exc}') from exc
        return len(payloads)

    # 0.6's names for the same operations
    publish = put

    def _reset(self):
        """After a failure: our client is dropped (the next put connects a new one); the user's is kept."""
        if not self.injected:
            self.close()

    def _connected(self):
        """The open client, connecting first if there is none (or it lost its connection)."""
        if self._client is not None and self._client.is_connected():
            return self._client
        if self.injected:
            return self._connect_given(self._client)
        self.close()
        state = {}
        connected = threading.Event()

        def on_connect(client, userdata, flags, reason, props):
            state['connack'] = reason
            connected.set()

        # paho's own reconnect is off: a lost connection fails the put and the next put connects again,
        # so no message sits in a queue for a connection that may come back much later
        client = self.client
        client.on_connect = on_connect
        client.on_disconnect = lambda c, u, flags, reason, props: connected.set()
        client.connect(self.host, self.port, self.keepalive)
        client.loop_start()
        self._loop_started = True
        if not connected.wait(self.timeout):
            raise MQTTPublishError(f'no answer (CONNACK) from {self.address} within {self.timeout:.1f}s')
        reason = state.get('connack')
        if reason is None or reason.is_failure:
            raise MQTTPublishError(f'{self.address} refused the connection: {reason or "disconnected"}')
        return client

    def _connect_given(self, client):
        """Connect the user's client, whose callbacks are left alone: wait until paho says it is connected."""
        self._credentials(client)
        client.connect(self.host, self.port, self.keepalive)
        if not self._loop_started:
            client.loop_start()
            self._loop_started = True
        deadline = time.monotonic() + self.timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                raise MQTTPublishError(f'no connection to {self.address} within {self.timeout:.1f}s')
            time.sleep(0.01)
        return client

    def close(self):
        """Disconnect and stop the network thread put() started; the next ``put`` connects again. Idempotent.

        The sink's own client is discarded; a client of the user's is kept (and
        only disconnected if ``put`` connected it).
        """
        client = self._client
        if client is None or (self.injected and not self._loop_started):
            return
        self._discard()
        try:
            client.disconnect()
        except Exception:  # already disconnected: nothing to release
            pass
        if self._loop_started:
            client.loop_stop()
        self._loop_started = False

    disconnect = close

    def __repr__(self):
        return f'MQTTSink({self.address!r}, {self.topic!r})'
