"""MQTT as the source of a stream: :class:`MQTTSource` (``pip install 'minibatch[mqtt]'``).

A QoS 1/2 message is acknowledged to the broker only after it was written to
the stream (or to its dead letters): at least once with a durable session
(see :mod:`minibatch.contrib.mqtt`).
"""
import json
import threading

from minibatch.contrib.base import Source
from minibatch.contrib.mqtt_endpoint import _check_qos, _Endpoint, _failed, _paho
from minibatch.errors import ConfigurationError


class MQTTSource(_Endpoint, Source):
    """Append every message published on ``topic`` to the stream.

    ``MQTTSource('mqtt://user:password@host:1883', 'sensors/#')`` subscribes
    with QoS 1 and appends each MQTT message as one stream message, the
    envelope minibatch 0.6 appended::

        {'topic': 'sensors/kitchen', 'payload': {'celsius': 21.5}, 'qos': 1, 'retain': False}

    ``payload`` is the JSON-decoded payload, any JSON value (an object, a
    list, a number, ...); ``topic`` is the topic the message was published
    on, ``qos`` its delivery QoS and ``retain`` its retain flag as paho
    reports them. With ``envelope=False`` the payload itself is the message
    and must be a JSON object. A payload that is not JSON (or, with
    ``envelope=False``, not a JSON object) goes to the stream's dead letters
    with the origin ``mqtt://host:port/<topic of the message>``.

    Messages are acknowledged to the broker only after they were stored
    (manual acks): messages that arrive together are appended as one write,
    then acknowledged. Pass ``client_id='...'`` to get a durable session
    (``clean_session=False`` is then the default): the broker keeps the
    subscription and queues messages while the source is disconnected, and
    sends unacknowledged ones again on reconnect. Without a client id the
    session is clean and lasts as long as one connection.

    A lost or refused connection logs one line on ``minibatch.contrib`` and
    is retried with a growing pause (see :class:`~minibatch.contrib.base.Source`);
    ``stream.stop()`` ends the source within about ``poll_interval`` seconds
    (up to paho's ``connect_timeout``, 5 s, while a TCP connection is being opened).

    A paho client of your own, given as ``client=`` (or set as ``_client``
    before the source starts, as in 0.6), is used instead of one the source
    makes: the source sets its callbacks, connects it (unless it is connected
    already), subscribes, and runs its network loop; after a failure it
    disconnects and connects the *same* client again. Give it
    ``manual_ack=True`` to keep the at-least-once acknowledgement; without it
    paho acknowledges on receipt.

    :meth:`on_message` is the paho message callback. Called by the source's
    own network loop it collects the messages of one read into one append;
    called from anywhere else (your code, a test) it stores that message in
    the attached stream at once.

    :param url: ``mqtt://[user[:password]@]host[:port]``, port 1883 by
        default; ``host`` or ``host:port`` alone mean the same
    :param topic: topic filter to subscribe to (wildcards ``+``/``#`` allowed)
    :param qos: subscription QoS; 0 means at most once (nothing to acknowledge)
    :param keepalive: seconds between keep-alive pings
    :param client: a paho ``Client`` of your own (see above)
    :param envelope: True (default, as 0.6): append ``{'topic', 'payload',
        'qos', 'retain'}``; False: append the payload alone (a JSON object)
    :param client_kwargs: passed to ``paho.mqtt.client.Client`` (``client_id``,
        ``clean_session``, ``protocol``, ``transport``, ``userdata``)
    :raises ConfigurationError: bad url, topic, qos, envelope or client arguments
    :raises MissingDependencyError: paho-mqtt is not installed
    """
    #: seconds the network loop waits for data before it checks for stop()
    poll_interval = 0.2
    #: most messages appended in one write
    max_batch = 1000
    #: seconds to wait for the broker's CONNACK / SUBACK
    handshake_timeout = 10.0
    #: seconds on_message() called from outside the source waits for the source to be attached
    attach_timeout = 5.0
    own_client_options = {'manual_ack': True, 'reconnect_on_failure': False}

    def __init__(self, url, topic, qos=1, keepalive=60, client=None, envelope=True, **client_kwargs):
        Source.__init__(self)
        if not isinstance(envelope, bool):
            raise ConfigurationError(f'envelope must be True or False, got {envelope!r}')
        self.envelope = envelope
        self._stream = None
        self._attached = threading.Event()
        self._loop_thread = None  # the thread running the network loop, while it runs
        self._received = []  # messages of the current network read, appended and acknowledged together
        self.qos = _check_qos(qos)
        protocol = client_kwargs.get('protocol')
        if client_kwargs.get('client_id') and 'clean_session' not in client_kwargs and \
                protocol in (None, 3, 4):  # MQTT 3.1 / 3.1.1; v5 has session expiry instead
            client_kwargs['clean_session'] = False
        self._setup(url, topic, keepalive, client_kwargs, client)

    def stream(self, stream):
        """Feed ``stream`` until :meth:`cancel` (see :class:`~minibatch.contrib.base.Source`)."""
        self._stream = stream
        self._attached.set()
        super().stream(stream)

    def on_message(self, client, userdata, message):
        """paho's message callback: the message becomes a message of the attached stream.

        What is appended is the envelope ``{'topic', 'payload', 'qos',
        'retain'}``, or with ``envelope=False`` the payload alone (see the class).

        In the source's network loop the message joins the others of the same
        read, appended as one write; called from another thread it is stored
        (or dead-lettered) and acknowledged before this returns.

        :raises RuntimeError: the source was not attached to a stream within ``attach_timeout``
        """
        if threading.current_thread() is self._loop_thread:
            self._received.append(message)
            return
        if not self._attached.wait(self.attach_timeout):
            raise RuntimeError(f'{self} received a message but is not attached to a stream '
                               '(stream.attach(source))')
        self._store(client, self._stream, [message])

    def _callbacks(self, client, state):
        """Set the callbacks run() needs; they take paho's version 1 or 2 arguments (a client may be the user's)."""
        def on_disconnect(c, u, *args):
            state['disconnect'] = args[1] if len(args) > 1 else (args[0] if args else None)
        client.on_connect = lambda c, u, flags, reason, *props: state.update(connack=reason)
        client.on_subscribe = lambda c, u, mid, reasons, *props: state.update(suback=reasons)
        client.on_disconnect = on_disconnect
        client.on_message = self.on_message

    def run(self, stream):
        received = self._received
        received.clear()
        state = {}
        client = self.client
        self._callbacks(client, state)
        self._loop_thread = threading.current_thread()
        try:
            if not (self.injected and client.is_connected()):
                self._credentials(client)
                client.connect(self.host, self.port, self.keepalive)
                self._await(client, lambda: 'connack' in state or self.cancelled, self.handshake_timeout,
                            'CONNACK')
                if self.cancelled:
                    return
                if _failed(state['connack']):
                    raise ConnectionRefusedError(f'{self.address} refused the connection: {state["connack"]}')
            client.subscribe(self.topic, qos=self.qos)
            self._await(client, lambda: 'suback' in state or self.cancelled, self.handshake_timeout, 'SUBACK')
            if self.cancelled:
                return
            failed = [code for code in state['suback'] if _failed(code, 128)]
            if failed:
                raise ConnectionRefusedError(f'{self.address} refused the subscription to {self.topic!r}: '
                                             f'{failed[0]}')
            self.ready.set()
            while not self.cancelled:
                rc = client.loop(timeout=self.poll_interval)
                # take what else is already waiting, so that a burst is one write
                while not rc and received and len(received) < self.max_batch:
                    before = len(received)
                    rc = client.loop(timeout=0)
                    if len(received) == before:
                        break
                if received:
                    self._store(client, stream, received)
                    received.clear()
                if rc:
                    reason = state.get('disconnect') or _paho().error_string(rc)
                    raise ConnectionError(f'connection to {self.address} lost: {reason}')
        finally:
            self.ready.clear()
            self._loop_thread = None
            try:
                client.disconnect()
            except Exception:  # the socket may be gone already; nothing left to release
                pass
            self._discard()  # ours: a fresh client next time; the user's: connected again next time

    def _document(self, message, stream):
        """The stream message for the MQTT ``message``, or None when it went to the dead letters."""
        origin = f'{self.address}/{message.topic}'
        if not self.envelope:
            return self.decode(message.payload, stream, origin)  # a JSON object, else dead-lettered
        payload = message.payload
        try:
            text = payload.decode('utf-8') if isinstance(payload, (bytes, bytearray)) else payload
            value = json.loads(text)
        except (TypeError, ValueError):  # UnicodeDecodeError is a ValueError
            # not JSON: decode() dead-letters it with the reason, exactly as with envelope=False
            value = self.decode(payload, stream, origin)
            if value is None:
                return None
        # any JSON value is a payload here, as in 0.6: the envelope is the object the stream needs
        return {'topic': message.topic, 'payload': value, 'qos': message.qos, 'retain': message.retain}

    def _store(self, client, stream, messages):
        """Append the messages as one write, dead-letter those that cannot be decoded, then ack all.

        If the write fails nothing is acknowledged and the exception ends the
        connection, so that a durable session gets the messages again.
        """
        docs = []
        for message in messages:
            doc = self._document(message, stream)
            if doc is not None:
                docs.append(doc)
        if docs:
            stream.append(docs)
            stream.flush()  # a stream with batchsize > 1 buffers appends: they must be written before the ack
        for message in messages:
            client.ack(message.mid, message.qos)
        self.progress()

    def __repr__(self):
        return f'MQTTSource({self.address!r}, {self.topic!r})'
