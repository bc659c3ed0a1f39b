"""MQTT: feed a stream from a topic (:class:`MQTTSource`), publish results to one (:class:`MQTTSink`).

Uses paho-mqtt 2.x (``pip install 'minibatch[mqtt]'``), imported when a source
or sink is created, so importing this module never needs the driver.

Each MQTT message becomes, as in minibatch 0.6, the stream message
``{'topic': ..., 'payload': <the JSON-decoded payload>, 'qos': ..., 'retain': ...}``;
``MQTTSource(..., envelope=False)`` appends the payload alone, which must then
be a JSON object.

Delivery, in short (details in docs/integrations/mqtt.rst):

- :class:`MQTTSource` acknowledges a QoS 1/2 message only after it was written
  to the stream (or to its dead letters). With a durable session (give a
  ``client_id``) a message the source received but could not store, because
  the store failed or the process died, is sent again by the broker when the
  source reconnects: at least once. Without a ``client_id`` the session ends
  with the connection and the broker forgets what was not acknowledged.
- :class:`MQTTSink` returns from ``put()`` only when the broker has
  acknowledged every message (QoS 1), and raises otherwise, so the window is
  retried: at least once, duplicates possible.
"""
import datetime
import inspect
import json
import re
import threading
import time
from urllib.parse import unquote, urlsplit

from minibatch.contrib.base import Sink, Source, require
from minibatch.errors import ConfigurationError, InvalidMessage, SinkError

DEFAULT_PORT = 1883

# arguments of paho's Client that the source and the sink set themselves
_RESERVED = ('callback_api_version', 'manual_ack')


class MQTTPublishError(SinkError):
    """A message could not be published to the MQTT broker (connection failed, refused or timed out)."""


def _paho():
    return require('paho.mqtt.client', 'mqtt')


def _redacted(url):
    """``url`` with any password replaced by ``***``, for error messages."""
    return re.sub(r'^([^/@]*//[^:/@]*:)[^@/]*@', r'\1***@', url)


def parse_url(url):
    """Return (host, port, username, password) of ``mqtt://[user[:password]@]host[:port]``.

    The scheme may be left out, as 0.6 programs do: ``'localhost'`` and
    ``'localhost:1883'`` mean ``mqtt://localhost:1883``.

    :raises ConfigurationError: another scheme, no host, a bad port, or a path
        (the topic is an argument of its own, not part of the URL)
    """
    if not isinstance(url, str):
        raise ConfigurationError(f'an MQTT url must be a string like mqtt://host:1883, got {url!r}')
    if '://' not in url:
        url = f'mqtt://{url}'
    parts = urlsplit(url)
    shown = _redacted(url)
    if parts.scheme != 'mqtt':
        raise ConfigurationError(f'an MQTT url must start with mqtt://, got {shown!r} '
                                 '(e.g. mqtt://user:password@localhost:1883)')
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f'bad port in MQTT url {shown!r}: {exc}') from None
    if not parts.hostname:
        raise ConfigurationError(f'MQTT url {shown!r} names no host (e.g. mqtt://localhost:1883)')
    if parts.path not in ('', '/') or parts.query or parts.fragment:
        raise ConfigurationError(f'MQTT url {shown!r} has a path or query; pass the topic as its own '
                                 'argument: MQTTSource(url, topic)')
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port, username, password


def _check_qos(qos):
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise ConfigurationError(f'qos must be 0, 1 or 2, got {qos!r}')
    return qos


def _check_topic(topic):
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(f'an MQTT topic must be a non-empty string, got {topic!r}')
    return topic


def _failed(code, threshold=1):
    """Whether a CONNACK/SUBACK code is a failure: a paho 2 ReasonCode, or the int of paho's version 1 callbacks.

    ``threshold``: the smallest failing int (1 for CONNACK return codes, 128 for SUBACK granted QoS).
    """
    is_failure = getattr(code, 'is_failure', None)
    if is_failure is not None:
        return is_failure
    return isinstance(code, int) and code >= threshold


class _Endpoint:
    """What the source and the sink share: the parsed URL and a factory of configured paho clients.

    The paho client in use is :attr:`client`: one given by the user
    (``client=``, or set as ``_client`` as 0.6 programs do), else one made by
    :meth:`new_client` when first needed. Only a client of our own is ever
    replaced or discarded; a given one is connected when needed and reused.
    """
    #: paho Client arguments of the clients the endpoint makes for itself
    own_client_options = {}

    def _setup(self, url, topic, keepalive, client_kwargs, client):
        self.url = url
        self.host, self.port, self._username, self._password = parse_url(url)
        self.topic = _check_topic(topic)
        self.keepalive = int(keepalive)
        reserved = [key for key in _RESERVED if key in client_kwargs]
        if reserved:
            raise ConfigurationError(f'{type(self).__name__} sets {", ".join(reserved)} itself; '
                                     'leave it out of the keyword arguments')
        self.client_kwargs = dict(client_kwargs)
        self._client = client
        self._made = None  # the client this endpoint made, the only one it replaces
        if client is None:
            self.new_client()  # a bad keyword argument fails here, not in a thread later

    @property
    def client(self):
        """The paho client in use: the one given (``client=`` / ``_client``), else a new one of our own."""
        if self._client is None:
            self._client = self._made = self.new_client(**self.own_client_options)
        return self._client

    @property
    def injected(self):
        """True when the client in use was given by the user rather than made here."""
        return self._client is not None and self._client is not self._made

    def _discard(self):
        """Forget our own client (the next use makes a new one); a client given by the user is kept."""
        if not self.injected:
            self._client = self._made = None

    def _credentials(self, client):
        # a client of the user's keeps its own credentials unless the url names some
        if self._username is not None:
            client.username_pw_set(self._username, self._password)

    @property
    def address(self):
        """``mqtt://host:port`` without the credentials (for logs and dead-letter origins)."""
        return f'mqtt://{self.host}:{self.port}'

    def new_client(self, **overrides):
        """A new paho client (callback API version 2) with the credentials set; not connected."""
        mqtt = _paho()
        kwargs = dict(self.client_kwargs, **overrides)
        try:
            # bind first: a Client that fails half-way through __init__ complains again when collected
            inspect.signature(mqtt.Client).bind(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f'{type(self).__name__}: bad paho Client arguments {kwargs}: {exc}') from None
        self._credentials(client)
        self.configure_client(client)
        return client

    def configure_client(self, client):
        """Hook for subclasses: called on each new paho client before it connects (e.g. ``tls_set()``)."""

    def _await(self, client, done, timeout, what):
        """Run the network loop of ``client`` until ``done()`` is true; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f'no {what} from {self.address} within {timeout:.0f}s')
            rc = client.loop(timeout=0.05)
            if rc:
                raise ConnectionError(f'connection to {self.address} lost while waiting for {what}: '
                                      f'{_paho().error_string(rc)}')


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


__all__ = ['MQTTSource', 'MQTTSink', 'MQTTPublishError', 'parse_url']
