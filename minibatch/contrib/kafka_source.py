"""Kafka as the source of a stream: :class:`KafkaSource` (``pip install 'minibatch[kafka]'``).

The source commits a batch's offsets only after the stream acknowledged the
append of that batch: at least once (see :mod:`minibatch.contrib.kafka`).
"""
import inspect
import json
import logging

from minibatch.contrib.base import Source, require
from minibatch.contrib.kafka_clients import _construct, _known, _urls
from minibatch.errors import ConfigurationError, InvalidMessage

logger = logging.getLogger('minibatch.contrib')


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
