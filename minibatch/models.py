"""The public data model: ``Stream``, ``Buffer`` and ``Window``.

They are mongoengine Documents on the connection alias ``'minibatch'`` with
the collections ``stream``, ``buffer`` and ``window``, exactly as in the
original minibatch, so existing code that queries them (``Buffer.objects.
filter(processed=False)``) keeps working on MongoDB.

All work goes through the store seam (:mod:`minibatch.store`), which is why
the same classes also serve the embedded SQLite store: there, Stream and
Window objects are plain in-memory instances (never saved), and the
mongoengine query API (``Stream.objects``, querysets from ``buffer()``) is not
available.
"""
import copy
import logging
import threading

from bson import ObjectId
from mongoengine import (BooleanField, DateTimeField, DictField, Document, DynamicField, FloatField, IntField,
                         ListField, StringField)

from minibatch import batching, bindings, retention
from minibatch.errors import ConfigurationError, NotSupportedByStore
from minibatch.store import get_store
from minibatch.store.base import AVAILABLE, DEFAULT_GROUP, STATES, group_stream, utcnow
from minibatch.stream_upkeep import StreamUpkeep

logger = logging.getLogger(__name__)



class _AsStored:
    """Mixin: a field read back exactly as the driver decoded it.

    Message data are plain values: mongoengine's conversion would turn bytes
    into a list of ints (``stream.buffer()`` would then disagree with what the
    consumer gets), and its change tracking on every access costs milliseconds
    per window for nothing. Saving works as for the base field.
    """

    def to_python(self, value):
        return value

    def __get__(self, instance, owner):
        if instance is None:
            return self
        return instance._data.get(self.name)


class PlainListField(_AsStored, ListField):
    """A ListField read back as the very list that was stored (window data)."""


class PlainDictField(_AsStored, DictField):
    """A DictField read back as the very dict that was stored (a message's data)."""


class Buffer(Document):
    """One message of a stream (a document of the ``buffer`` collection).

    ``processed`` is False while the message waits to be taken; ``state``
    tells the rest of its life cycle (claimed, retry, done, dead).
    """
    # ObjectIds on MongoDB, integers on the embedded store: the id must accept both
    # (an ObjectIdField would make a window with an integer id fail to pickle to a worker)
    id = DynamicField(primary_key=True, db_field='_id', default=ObjectId)
    stream = StringField(required=True)
    created = DateTimeField(default=utcnow)
    data = PlainDictField(required=True)
    processed = BooleanField(default=False)
    state = StringField(default='available', choices=STATES)
    claim = StringField()
    lease = DateTimeField()
    attempts = IntField(default=0)
    error = StringField()
    # indexes are created by the MongoDB store itself (minibatch.store.mongodb),
    # so that documents never race it with differently named index definitions
    meta = {'db_alias': 'minibatch', 'collection': 'buffer', 'strict': False,
            'auto_create_index': False, 'auto_create_index_on_save': False}


class Window(Document):
    """One emitted window: the ``data`` list handed to the streaming function.

    ``processed`` becomes True once the function (and the sink) succeeded.
    Build one for in-memory use with :meth:`for_data` (no conversion of the data).
    """
    id = DynamicField(primary_key=True, db_field='_id', default=ObjectId)  # see Buffer.id
    stream = StringField(required=True)
    created = DateTimeField(default=utcnow)
    data = PlainListField(default=list)
    processed = BooleanField(default=False)
    query = ListField(default=list)
    meta = {'db_alias': 'minibatch', 'collection': 'window', 'strict': False,
            'auto_create_index': False, 'auto_create_index_on_save': False}

    @classmethod
    def for_data(cls, stream, data, id=None):
        """A Window holding the list ``data`` itself (not a converted copy); nothing is saved."""
        window = cls(stream=stream, processed=False)
        window._data['data'] = data
        if id is not None:
            window.id = id
        return window


class Records(list):
    """A list of records that also answers ``count()`` with its length, as a queryset does."""

    def count(self, *args):
        return super().count(*args) if args else len(self)


def _refuse_filters(store, filters):
    if filters:
        raise NotSupportedByStore(f'filters {", ".join(sorted(filters))} need the MongoDB store (querysets); '
                                  f'{store.describe()} takes processed= and limit= only')


class Stream(StreamUpkeep, Document):
    """A named, persistent stream of dict messages.

    Get one with :func:`minibatch.stream` / :meth:`Stream.get_or_create`.
    """
    name = StringField(required=True)
    status = DictField(default=dict)
    created = DateTimeField(default=utcnow)
    closed = BooleanField(default=False)
    interval = FloatField(default=1.0)
    last_read = DateTimeField(default=utcnow)
    max_age = FloatField()
    meta = {'db_alias': 'minibatch', 'collection': 'stream', 'strict': False,
            'auto_create_index': False, 'auto_create_index_on_save': False}

    _store = None

    # -- creating ---------------------------------------------------------
    @classmethod
    def get_or_create(cls, name, url=None, interval=None, batchsize=1, max_age=None, **cnx_kwargs):
        """Return the stream ``name``, creating it if needed.

        :param url: store URL (``mongodb://...``, ``sqlite:///path``); default
            from ``MINIBATCH_URL`` / ``MINIBATCH_MONGO_URL`` / ``MONGO_URL``,
            else the embedded SQLite store
        :param interval: default window interval in seconds (updates an existing stream)
        :param batchsize: appends are collected and written ``batchsize`` at a
            time (one round trip per batch); a partial batch is written after
            0.5 s, on ``flush()`` and at interpreter exit. 1 writes every append at once.
        :param max_age: the retention limit, as in minibatch 0.6: seconds, or a
            dict of ``datetime.timedelta`` arguments (``{'minutes': 5}``).
            Messages older than that leave the stream, processed or not; a
            background thread of this process applies it every ``max_age / 2``
            seconds (at most every minute) even when no consumer runs, until
            ``stream.stop()`` or ``stream.autoclear(None)``. What it removes
            unprocessed is counted (``stats()['expired']``) and logged.
            None (the default) leaves the stream's limit as it is.
        :param cnx_kwargs: passed to the store's client (e.g. pymongo's
            ``serverSelectionTimeoutMS``, ``tls``, ``authSource``)
        :raises minibatch.errors.StoreUnavailable: the store cannot be reached
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f'a stream name must be a non-empty string, got {name!r}')
        if isinstance(batchsize, bool) or not isinstance(batchsize, int) or batchsize < 1:
            raise ConfigurationError(f'batchsize must be an integer >= 1, got {batchsize!r}')
        max_age = retention.max_age_seconds(max_age)
        store = get_store(url, **cnx_kwargs)
        info = store.ensure_stream(name, interval=interval, max_age=max_age)
        stream = cls._from_info(store, info, batchsize=batchsize)
        if max_age is not None:
            retention.start(store, name, max_age)
        return stream

    @classmethod
    def _from_info(cls, store, info, batchsize=1):
        stream = cls(name=info.name, status=info.status or {}, created=info.created, closed=info.closed,
                     interval=info.interval, last_read=info.last_read, max_age=info.max_age)
        stream._store = store
        stream._batchsize = batchsize
        stream._batch = []
        stream._batch_lock = threading.Lock()
        stream._flusher = None
        stream._sources = []
        if batchsize > 1:
            batching.register(stream)
        return stream

    @property
    def store(self):
        """The store holding this stream (resolved from the environment for documents loaded by a query)."""
        if self._store is None:
            self._store = get_store()
        return self._store

    # -- producing --------------------------------------------------------
    def append(self, data):
        """Append a message (a dict), or a list of dicts as one batch.

        With ``batchsize=1`` (the default) the write is acknowledged when this
        returns; a list is one write, all or nothing. With a larger
        ``batchsize``, messages are collected and written per batch.

        With batching, each message is validated and copied here (as the store
        will read it back): a bad message fails this call, not the batch, and
        changing the dict after the call does not change the message.

        :raises minibatch.errors.InvalidMessage: (a ``TypeError``) a message is
            not a dict or holds a value the store cannot serialise; nothing is written
        """
        docs = data if isinstance(data, list) else [data]
        if getattr(self, '_batchsize', 1) <= 1:
            self.store.append(self.name, docs)  # validates everything before writing anything
            return
        # reject a bad message now, not when its batch is written, and keep a copy that a
        # later change to the caller's dict cannot poison
        copies = getattr(self.store, 'validated_copies', None)
        if copies is not None:
            docs = copies(docs)
        else:
            self.store.validate(docs)
            docs = copy.deepcopy(docs)
        with self._batch_lock:
            self._batch.extend(docs)
            full = len(self._batch) >= self._batchsize
            if not full:
                self._ensure_flusher()
        if full:
            self.flush()

    def flush(self):
        """Write any collected (batched) messages now. No-op when nothing is pending.

        On failure the messages stay pending, so a later flush can still write them.
        """
        lock = getattr(self, '_batch_lock', None)
        if lock is None:
            return
        with lock:
            pending, self._batch = self._batch, []
            if not pending:
                return
            try:
                self.store.append(self.name, pending)
            except Exception:
                self._batch = pending + self._batch
                raise

    def _ensure_flusher(self):
        # one daemon thread per batching stream, so a partial batch is written
        # within batching.FLUSH_INTERVAL even if the producer goes quiet
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = batching.start_flusher(self)

    # -- sources ----------------------------------------------------------
    @property
    def batchsize(self) -> int:
        """Appends collected per write (1: every append is written at once)."""
        return getattr(self, '_batchsize', 1)

    @batchsize.setter
    def batchsize(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f'batchsize must be an integer >= 1, got {size!r}')
        if size <= 1:
            self.flush()
        self._batchsize = size
        if size > 1:
            batching.register(self)

    def ensure_initialized(self):
        """Kept from 0.6, where a new stream was opened in a second step; here a stream is ready when created."""

    @property
    def source(self):
        """The source attached last (None if none), as in minibatch 0.6."""
        sources = getattr(self, '_sources', None)
        return sources[-1] if sources else None

    def attach(self, source, background=True):
        """Feed this stream from ``source`` (an object with ``stream(stream)``).

        Runs ``source.stream(self)`` in a daemon thread (or inline when
        ``background`` is False). ``stop()`` ends it.
        """
        self._sources.append(source)
        if not background:
            source.stream(self)
            return source
        thread = threading.Thread(target=source.stream, args=(self,), name=f'minibatch-source-{self.name}',
                                  daemon=True)
        thread.start()
        return source

    def stop(self):
        """Stop every attached source (``source.cancel()``) and this process's housekeeping; flush appends."""
        for source in getattr(self, '_sources', []):
            cancel = getattr(source, 'cancel', None) or getattr(source, 'stop', None)
            if cancel:
                cancel()
        retention.stop(self.store, self.name)
        self.flush()

    def autoclear(self, max_age=None):
        """Set the retention limit (see ``max_age`` of :meth:`get_or_create`); None removes it.

        With a limit, this process's housekeeping thread runs (started or
        updated); with None, the stream keeps its messages again and the
        thread stops.
        """
        seconds = retention.max_age_seconds(max_age)
        self.store.update_stream(self.name, max_age=seconds)
        self.max_age = seconds
        if seconds is None:
            retention.stop(self.store, self.name)
        else:
            retention.start(self.store, self.name, seconds)

    def put(self, data):
        """Append ``data`` (a dict or a list of dicts): a stream is a sink too.

        As ``sink=`` of a consumer on the same store, a window's result is not
        put but appended by the window's commit, exactly once (docs/groups.rst).
        """
        return self.append(list(data) if isinstance(data, (list, tuple)) else data)

    # -- consuming --------------------------------------------------------
    def streaming(self, fn=None, **kwargs):
        """``@stream.streaming(size=N)``: like :func:`minibatch.streaming` for this stream."""
        from minibatch.consumer import streaming
        kwargs.setdefault('url', self.store.url)
        return streaming(self.name, fn=fn, **kwargs)

    # -- inspecting -------------------------------------------------------
    def buffer(self, processed=None, limit=None, **filters):
        """The stream's messages, oldest first (``processed=False``: only those waiting).

        MongoDB: a ``Buffer`` queryset, further filtered by ``filters``
        (mongoengine lookups such as ``created__lte=t``, as in 0.6). Other
        stores: a list of ``Buffer`` objects whose ``count()`` is its length;
        they take no other filters (NotSupportedByStore names them).
        """
        if self.store.querysets:
            qs = self.store.queryset(Buffer).filter(stream=self.name, **filters).order_by('_id')
            if processed is not None:
                qs = qs.filter(processed=processed)
            return qs.limit(limit) if limit else qs
        _refuse_filters(self.store, filters)
        if processed is False:
            messages = self.store.messages(self.name, state=AVAILABLE, limit=limit)
        else:
            messages = [m for m in self.store.messages(self.name) if processed is None or m.processed]
            messages = messages[:limit] if limit else messages
        return Records(Buffer(id=m.id, stream=m.stream, created=m.created, data=m.data, processed=m.processed,
                              state=m.state, attempts=m.attempts, error=m.error) for m in messages)

    def window(self, processed=None, **filters):
        """The stream's window records, oldest first.

        MongoDB: a ``Window`` queryset (``filters`` as for :meth:`buffer`);
        other stores: a list of ``Window`` objects with ``count()``.
        """
        if self.store.querysets:
            qs = self.store.queryset(Window).filter(stream=self.name, **filters).order_by('_id')
            return qs.filter(processed=processed) if processed is not None else qs
        _refuse_filters(self.store, filters)
        return Records(Window(id=w.id, stream=w.stream, created=w.created, data=w.data, processed=w.processed,
                              query=w.query) for w in self.store.windows(self.name, processed=processed))

    # -- removing ---------------------------------------------------------
    def clear(self):
        """Remove every message and window of this stream (pending appends too); keep the stream."""
        if getattr(self, '_batch_lock', None) is not None:
            with self._batch_lock:
                self._batch = []
        for copies in self._group_streams():  # its groups' copies of those messages
            self.store.clear(copies)
        return self.store.clear(self.name)

    def delete(self, *args, **kwargs):
        """Remove this stream with all its messages, dead letters, windows and groups. Irreversible."""
        self.stop()
        copies = self._group_streams()
        self.store.delete_stream(self.name)
        for name in copies:
            self.store.delete_stream(name)

    def _group_streams(self):
        return [group_stream(self.name, group) for group in self.store.groups(self.name) if group != DEFAULT_GROUP]

    def save(self, *args, **kwargs):
        if not self.store.querysets:
            raise NotSupportedByStore('Stream.save() needs the MongoDB store; the stream is kept by '
                                      f'{self.store.describe()} already')
        return super().save(*args, **kwargs)

    def __repr__(self):
        return f'<Stream {self.name!r} on {self.store.describe()}>'


# the engine hands these out (windows to functions, streams to emitters) without importing this module
bindings.bind(stream=Stream, window=Window)
