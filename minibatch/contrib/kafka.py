"""Kafka as a source and as a sink of a stream (``pip install 'minibatch[kafka]'``).

:class:`KafkaSource` feeds a stream from a Kafka topic, :class:`KafkaSink`
writes a consumer's results to a topic. Both use kafka-python and JSON values.

Delivery promise, end to end (topic A -> stream -> function -> topic B):
at least once. The source commits a batch's offsets only after the stream
acknowledged the append of that batch, so a process that dies in between
reads the batch again rather than losing it. The sink waits until Kafka
acknowledged every message of a window before the window is committed, so a
window whose send fails is retried (and finally dead-lettered), never lost.
A message may therefore arrive more than once; nothing is dropped silently.
"""
import datetime
import inspect
import json
import logging
import threading
import time

from minibatch.contrib.base import Sink, Source, require
from minibatch.errors import ConfigurationError, InvalidMessage, SinkError

logger = logging.getLogger('minibatch.contrib')

#: brokers used when ``urls`` is not given
DEFAULT_URLS = ('localhost:9092',)


class KafkaSinkError(SinkError):
    """Kafka did not acknowledge a message of a window within the sink's timeout."""


def _urls(urls):
    """A list of 'host:port' from a list, or a string with commas."""
    if urls is None:
        return list(DEFAULT_URLS)
    if isinstance(urls, str):
        urls = urls.split(',')
    urls = [u.strip() for u in urls if u and u.strip()]
    if not urls:
        raise ConfigurationError("urls must name at least one Kafka broker as 'host:port'")
    return urls


def _known(client_class, configs, name, value):
    """Set ``configs[name] = value`` unless given, if this kafka-python version knows the option."""
    if name not in configs and name in getattr(client_class, 'DEFAULT_CONFIG', {}):
        configs[name] = value


def _closing_client_factory(client_class, configs, made):
    """Make the client constructor remember the network client it creates.

    kafka-python 3 starts the client's I/O thread before it bootstraps; when
    the bootstrap fails, the constructor raises and leaves that thread
    running. A source that retries against a broker that is down would leak
    one thread per attempt, so :func:`_construct` closes what it made.
    """
    factory = configs.get('kafka_client') or getattr(client_class, 'DEFAULT_CONFIG', {}).get('kafka_client')
    if factory is None:
        return configs

    def make(**kwargs):
        client = factory(**kwargs)
        made.append(client)
        return client
    return dict(configs, kafka_client=make)


def _construct(client_class, **configs):
    made = []
    try:
        return client_class(**_closing_client_factory(client_class, configs, made))
    except BaseException:
        for client in made:
            try:
                client.close()
            except Exception:  # already broken; we only want its thread gone
                pass
        raise


class KafkaSource(Source):
    """Append the JSON messages of a Kafka topic to a stream, at least once.

    :param topic: the topic to read
    :param urls: brokers as a list of ``'host:port'`` (or one comma-separated
        string); default ``['localhost:9092']``
    :param consumer: a consumer of your own to read from instead of one the
        source creates (also settable as ``source._consumer``, as in 0.6);
        see *Your own consumer* below
    :param consumer_configs: passed to ``kafka.KafkaConsumer``; the defaults are
        ``group_id='minibatch-<topic>'``, ``auto_offset_reset='earliest'``,
        ``session_timeout_ms=6000`` and ``bootstrap_timeout_ms=5000``.
        ``enable_auto_commit`` is always False: offsets are committed by the
        source, after the append (``True``, 0.6's default, is overridden with a
        warning).

    Each round polls at most ``max_poll_records`` messages (kafka-python's
    option, default 500), decodes every value as a JSON object, appends the
    decoded messages to the stream as one list (one acknowledged write), and
    only then commits the offsets. A value that is not a JSON object goes to
    the stream's dead letters with its origin ``kafka://topic/partition/offset``
    and is committed like the others. If the append or the commit fails, the
    consumer is closed and a new one resumes from the last committed offsets:
    the uncommitted messages are read again (possibly a second time into the
    stream), never skipped.

    ``stream.stop()`` (or :meth:`cancel`) ends the source within about half a
    second (the poll timeout); while it is still connecting to an unreachable
    broker, within ``bootstrap_timeout_ms``. A broker that cannot be reached
    is logged as one line per attempt and retried with a growing pause.

    *Your own consumer.* A consumer passed as ``consumer=`` (or set as
    ``_consumer`` before the source starts) is the user's: the source never
    closes or replaces it. After a failure it is used again, so it resumes
    from its own position. A ``kafka.KafkaConsumer`` is read as above (poll,
    append, commit); it is subscribed to ``topic`` only if it has neither a
    subscription nor an assignment. Any other object (a test double, say) is
    read the way 0.6 read every consumer, by iterating it: each record's
    ``value`` is appended, then ``commit()`` is called if the object has it,
    and the source ends when the iteration ends.
    """
    #: seconds one poll waits for messages; bounds how fast cancel() takes effect
    poll_timeout = 0.5
    #: seconds closing the consumer may take (leaving the group) before giving up
    close_timeout = 2.0

    def __init__(self, topic, urls=None, consumer=None, **consumer_configs):
        super().__init__()
        self._kafka = require('kafka', 'kafka')
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f'topic must be a non-empty string, got {topic!r}')
        self.topic = topic
        self.urls = _urls(urls)
        if consumer_configs.get('enable_auto_commit'):
            # 0.6 auto-committed by default, so 0.6 programs may pass it; committing after the append
            # gives them what they asked for (committed offsets) without losing a message in a crash
            logger.warning('KafkaSource commits offsets itself, after each append (at-least-once); '
                           'enable_auto_commit=True is ignored')
        configs = {'group_id': f'minibatch-{topic}', 'auto_offset_reset': 'earliest',
                   'session_timeout_ms': 6000, 'heartbeat_interval_ms': 2000}
        configs.update(consumer_configs)
        configs['enable_auto_commit'] = False
        if not configs.get('group_id'):
            raise ConfigurationError('KafkaSource needs a group_id: committed offsets belong to a consumer group')
        consumer_class = self._kafka.KafkaConsumer
        # kafka-python 3 waits 30 s for a broker by default, and cancel() cannot cut that short
        _known(consumer_class, configs, 'bootstrap_timeout_ms', 5000)
        self.configs = configs
        self.group_id = configs['group_id']
        #: the consumer in use; preset (``consumer=`` or by assignment) it is the user's
        self._consumer = consumer
        self._made = None  # the consumer this source created, the only one it closes or replaces

    @property
    def consumer(self):
        """The consumer: the one given (``consumer=`` / ``_consumer``), else one created now.

        A created consumer is subscribed to ``topic``. Raises what
        ``kafka.KafkaConsumer`` raises when no broker can be reached.
        """
        if self._consumer is None:
            consumer = _construct(self._kafka.KafkaConsumer, bootstrap_servers=self.urls, **self.configs)
            consumer.subscribe([self.topic])
            self._consumer = self._made = consumer
        return self._consumer

    @property
    def injected(self):
        """True when the consumer in use was given by the user rather than created by the source."""
        return self._consumer is not None and self._consumer is not self._made

    def run(self, stream):
        """Connect, then poll -> append -> commit until cancelled; raises on any failure."""
        consumer = self.consumer
        if not self.injected:
            self._poll(stream, consumer, close=True)
        elif isinstance(consumer, self._kafka.KafkaConsumer):
            if not consumer.subscription() and not consumer.assignment():
                consumer.subscribe([self.topic])
            self._poll(stream, consumer, close=False)
        else:
            self._iterate(stream, consumer)

    def _poll(self, stream, consumer, close):
        """Poll -> append -> commit until cancelled; ``close``: discard the consumer when leaving."""
        try:
            while not self.cancelled:
                batch = consumer.poll(timeout_ms=int(self.poll_timeout * 1000))
                if not batch:
                    continue
                self._deliver(stream, batch)
                # after the stream acknowledged the batch, never before: a crash in
                # between re-delivers the batch instead of losing it
                consumer.commit()
                self.progress()
        finally:
            if close:
                # a failed consumer of ours is replaced by a new one, which resumes from the commits
                self._consumer = self._made = None
                self._close(consumer)

    def _iterate(self, stream, consumer):
        """0.6's protocol for a consumer that is not a KafkaConsumer: iterate, append each value, commit."""
        commit = getattr(consumer, 'commit', None)
        for record in consumer:
            if self.cancelled:
                return
            self._deliver_one(stream, record)
            if commit is not None:
                commit()
            self.progress()
        # the consumer has no more records (consumer_timeout_ms, a finite double): the source is done
        self._cancelled.set()

    def _deliver_one(self, stream, record):
        origin = f'kafka://{getattr(record, "topic", self.topic)}/{getattr(record, "partition", "?")}/' \
                 f'{getattr(record, "offset", "?")}'
        value = record.value
        message = value if isinstance(value, dict) else self.decode(value, stream, origin)
        if message is not None:
            self._append(stream, [(message, origin)])
        stream.flush()

    def _deliver(self, stream, batch):
        """Append the polled records to ``stream`` as one write; dead-letter the undecodable ones."""
        good = []
        for partition in sorted(batch, key=lambda tp: tp.partition):
            for record in batch[partition]:
                origin = f'kafka://{record.topic}/{record.partition}/{record.offset}'
                value = record.value
                message = value if isinstance(value, dict) else self.decode(value, stream, origin)
                if message is not None:
                    good.append((message, origin))
        if good:
            self._append(stream, good)
        # a stream created with batchsize > 1 only collects appends; the offsets
        # may be committed only once the messages are written
        stream.flush()

    def _append(self, stream, good):
        try:
            stream.append([message for message, _ in good])
        except InvalidMessage:
            # one message the store refuses (a value it cannot hold) must not block
            # the topic forever: append the others, dead-letter that one as text
            for message, origin in good:
                try:
                    stream.append(message)
                except InvalidMessage as exc:
                    logger.warning('%s: the store refused the message at %s; it goes to the dead letters of %r: %s',
                                   self, origin, stream.name, exc)
                    stream.reject({'payload': json.dumps(message, default=repr), 'origin': origin},
                                  f'the store refused the message: {exc}')

    def _close(self, consumer):
        params = inspect.signature(consumer.close).parameters
        kwargs = {'autocommit': False}
        if 'timeout_ms' in params:
            kwargs['timeout_ms'] = int(self.close_timeout * 1000)
        try:
            consumer.close(**kwargs)
        except Exception as exc:  # the consumer is discarded anyway; a new one resumes from the commits
            logger.debug('%s: closing the consumer failed: %s', self, exc)

    def __repr__(self):
        return f'KafkaSource({self.topic!r}, urls={self.urls!r})'


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


def _describe(exc):
    # kafka-python's errors already start with their class name
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f'{name}: {text}'


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
