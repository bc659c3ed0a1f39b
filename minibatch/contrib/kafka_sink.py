"""Kafka as the sink of a consumer: :class:`KafkaSink` (``pip install 'minibatch[kafka]'``).

``put`` returns only once Kafka acknowledged every message of the window, so
a window whose send fails is retried, never lost (see :mod:`minibatch.contrib.kafka`).
Values are sent as JSON unless a ``value_serializer`` of the user's is given.
"""
import datetime
import json
import threading
import time

from minibatch.contrib.base import Sink, require
from minibatch.contrib.kafka_clients import _construct, _describe, _known, _urls
from minibatch.errors import ConfigurationError, InvalidMessage, SinkError


class KafkaSinkError(SinkError):
    """Kafka did not acknowledge a message of a window within the sink's timeout."""


class KafkaSink(Sink):
    """Send a window's result to a Kafka topic as JSON; ``put`` returns once Kafka acknowledged it.

    :param topic: the topic to write
    :param urls: brokers as a list of ``'host:port'`` (or one comma-separated
        string); default ``['localhost:9092']``
    :param expand: True (default): a list (or tuple) is sent as one Kafka
        message per item; False: the value is sent as one message, whatever it is
    :param key: optional message key: the name of a field of each item, or a
        function ``item -> str | bytes | None``. Messages with the same key go to
        the same partition, and consumers can use it to drop repeats.
    :param timeout: seconds ``put`` may wait for the broker, for connecting and
        for the acknowledgements together (default 30)
    :param producer: a producer of your own to send with (also settable as
        ``sink._producer``, as in 0.6). It is the user's: its own serializers
        apply, and the sink never closes or replaces it.
    :param producer_configs: passed to ``kafka.KafkaProducer`` (e.g. ``acks``,
        ``compression_type``, ``max_block_ms``). A ``value_serializer`` given
        here replaces the JSON encoding.

    Each item is sent as 0.6 sent it, ``producer.send(topic, value=item)``,
    with ``key=`` added only when a key is configured; the JSON encoding is
    the producer's ``value_serializer``. The producer is created at the first
    ``put`` (so the sink can be built without a broker, and after a fork) and
    reused until :meth:`close`. ``put`` is thread-safe.

    A :class:`~minibatch.contrib.base.Sink`: items may be any JSON value, and
    ``put([])`` sends nothing (with ``expand=False`` it sends ``[]``).
    """
    dicts_only = False
    error = KafkaSinkError

    def __init__(self, topic, urls=None, expand=True, key=None, timeout=30.0, producer=None, **producer_configs):
        self._kafka = require('kafka', 'kafka')
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f'topic must be a non-empty string, got {topic!r}')
        if timeout is None or timeout <= 0:
            raise ConfigurationError(f'timeout must be a positive number of seconds, got {timeout!r}')
        if key is not None and not (callable(key) or isinstance(key, str)):
            raise ConfigurationError(f'key must be a field name or a function, got {key!r}')
        self.topic = topic
        self.urls = _urls(urls)
        self.expand = expand
        self.key = key
        self.timeout = float(timeout)
        configs = dict(producer_configs)
        producer_class = self._kafka.KafkaProducer
        # connecting and waiting for metadata must not outlast the put() deadline
        _known(producer_class, configs, 'bootstrap_timeout_ms', int(self.timeout * 1000))
        _known(producer_class, configs, 'max_block_ms', int(self.timeout * 1000))
        # items are checked against our encoder before the first send, so that a bad item fails
        # the window with nothing sent; with a serializer of the user's that check is theirs
        self._check = None if 'value_serializer' in configs else _to_json
        configs.setdefault('value_serializer', _json_serializer(self._kafka))
        self.configs = configs
        self._producer = producer
        self._made = None  # the producer this sink created, the only one it closes
        self._lock = threading.Lock()

    @property
    def producer(self):
        """The ``KafkaProducer``, created on first use. Raises KafkaSinkError if no broker answers."""
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = self._made = _construct(self._kafka.KafkaProducer,
                                                             bootstrap_servers=self.urls, **self.configs)
                except Exception as exc:
                    raise KafkaSinkError(f'cannot connect to Kafka at {",".join(self.urls)} to write topic '
                                         f'{self.topic!r}: {_describe(exc)}') from exc
            return self._producer

    def put(self, data, topic=None):
        """Send ``data`` to ``topic`` (default: the sink's) and wait until Kafka acknowledged it.

        Returns how many messages were sent.

        Blocking, at most ``timeout`` seconds plus connecting. Not atomic: when
        it raises, some messages may have been written already, and the retry
        of the window writes them again (at least once).

        :raises minibatch.errors.InvalidMessage: an item cannot be encoded as
            JSON (nothing was sent)
        :raises KafkaSinkError: the broker could not be reached, or did not
            acknowledge a message in time
        """
        return super().put(data, topic=topic)

    def prepare(self, item):
        """``(item, key)``; InvalidMessage if the item cannot be encoded (checked before anything is sent)."""
        if self._check:
            self._check(item)
        return item, self._key_of(item)

    def write(self, messages, topic=None):
        """Send the ``(item, key)`` pairs, then wait until Kafka acknowledged every one."""
        topic = topic or self.topic
        items = [item for item, _ in messages]
        keys = [key for _, key in messages]
        deadline = time.monotonic() + self.timeout
        producer = self.producer
        try:
            # 0.6's call, send(topic, value=item); a key only when one is configured, so that a
            # producer double written for 0.6 sees the call it expects
            futures = [producer.send(topic, value=item, **({} if key is None else {'key': key}))
                       for item, key in zip(items, keys)]
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            for future in futures:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            raise KafkaSinkError(f'sending {len(items)} message(s) to topic {topic!r} at '
                                 f'{",".join(self.urls)} failed: {_describe(exc)}') from exc
        return len(items)

    def _key_of(self, item):
        if self.key is None:
            return None
        if callable(self.key):
            key = self.key(item)
        else:
            key = item.get(self.key) if isinstance(item, dict) else None
        if key is None or isinstance(key, bytes):
            return key
        return str(key).encode('utf-8')

    def close(self, timeout=None):
        """Flush and close the producer the sink created; a later ``put`` creates a new one.

        A producer of the user's (``producer=`` / ``_producer``) is flushed and kept, not closed.
        """
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            producer = self._producer
            if producer is None:
                return
            if producer is not self._made:
                producer.flush(timeout=timeout)
                return
            self._producer = self._made = None
        producer.close(timeout=timeout)

    def __repr__(self):
        return f'KafkaSink({self.topic!r}, urls={self.urls!r})'


def _json_default(value):
    # what the stores hand back besides JSON types: datetimes, MongoDB ids
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if type(value).__name__ == 'ObjectId':
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _json_serializer(kafka):
    """A value serializer encoding JSON with :func:`_to_json`, of the kind this kafka-python expects.

    kafka-python 3 warns about plain functions and wants a ``Serializer``
    (``serialize(topic, headers, data)``); 2.x calls the serializer itself.
    """
    base = getattr(getattr(kafka, 'serializer', None), 'Serializer', None)
    if base is None:
        return _to_json

    class JSONSerializer(base):
        def serialize(self, topic, headers, data):
            return _to_json(data)

        def __call__(self, data):
            return _to_json(data)

    return JSONSerializer()


def _to_json(item):
    try:
        return json.dumps(item, default=_json_default).encode('utf-8')
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f'KafkaSink cannot encode {item!r} as JSON: {exc}') from exc
