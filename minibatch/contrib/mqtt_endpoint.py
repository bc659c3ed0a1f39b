"""What :class:`~minibatch.contrib.mqtt.MQTTSource` and :class:`~minibatch.contrib.mqtt.MQTTSink` share.

:func:`parse_url` reads ``mqtt://[user[:password]@]host[:port]``;
:class:`_Endpoint` holds the parsed URL and the topic, and makes (or takes
from the user) the paho client, configured the same way for both. paho-mqtt
is imported only when a client is made (:func:`_paho`), so importing this
module never needs the driver.
"""
import inspect
import re
import time
from urllib.parse import unquote, urlsplit

from minibatch.contrib.base import require
from minibatch.errors import ConfigurationError

DEFAULT_PORT = 1883

# arguments of paho's Client that the source and the sink set themselves
_RESERVED = ('callback_api_version', 'manual_ack')


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
