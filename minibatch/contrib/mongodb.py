"""MongoDB collections as sources and sinks of a stream.

* :class:`MongoSource` polls a collection for documents whose id is greater
  than the last one it appended, in id order;
* :class:`MongoReplicasetSource` follows a collection's change stream (needs a
  replica set, or a server with single-node change streams);
* :class:`MongoSink` writes what a consumer returns into a collection.

Both sources remember where they stopped, in the ``status`` of the stream they
feed (``stream.status['checkpoints']``, kept by
:class:`~minibatch.contrib.mongodb_checkpoint.StreamCheckpoint`), so a new
source object — after a restart of the process, say — continues after the
last document or change it appended: it neither appends it again nor skips what came in meanwhile. The
position is written right *after* the append has been acknowledged, so a crash
between the two repeats that one append when the source comes back (at least
once), and never loses one.

Documents are converted to plain values any store can hold
(:func:`json_safe`): ObjectIds, Decimal128 and other BSON types become strings
or numbers, datetimes stay datetimes (naive UTC, the library's convention).

pymongo is a dependency of minibatch itself, so nothing extra is needed.
"""
import base64
import datetime
import logging
import re
import uuid

import bson
from bson import json_util
from pymongo import ReplaceOne
from pymongo.write_concern import WriteConcern

from minibatch.contrib.base import Sink, Source
from minibatch.contrib.mongodb_checkpoint import StreamCheckpoint
from minibatch.errors import ConfigurationError, InvalidMessage, SinkError

logger = logging.getLogger('minibatch.contrib')


# -- values ----------------------------------------------------------------
def json_safe(value):
    """Return ``value`` (a BSON document or value) made of plain JSON-like values.

    Dicts and lists are converted recursively; str, int, float, bool and None
    stay as they are; datetimes stay datetimes, as naive UTC. ObjectId,
    Decimal128, UUID, Code and Regex become their string form, Int64 an int,
    Timestamp a naive UTC datetime, binary data a base64 string, DBRef a dict
    ``{'collection', 'id', 'database'}``, MinKey/MaxKey the strings
    ``'MinKey'``/``'MaxKey'``. Anything else becomes ``str(value)``. Never raises.
    """
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, bson.Code):  # a str subclass that would stay BSON code in a MongoDB store
        return str(value)
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        return int(value)  # Int64 -> int
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:  # a tz_aware client: keep the library's naive-UTC convention
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value
    if isinstance(value, bson.DatetimeMS):  # a datetime out of Python's range
        return str(value)
    if isinstance(value, bson.Timestamp):
        return value.as_datetime().replace(tzinfo=None)
    if (isinstance(value, bson.Binary) and value.subtype in (bson.binary.UUID_SUBTYPE, bson.binary.OLD_UUID_SUBTYPE)
            and len(value) == 16):
        return str(uuid.UUID(bytes=bytes(value)))  # subtype 3 read with the Python driver's legacy byte order
    if isinstance(value, (bytes, bytearray)):  # Binary is a bytes subclass
        return base64.b64encode(bytes(value)).decode('ascii')
    if isinstance(value, bson.DBRef):
        return {'collection': value.collection, 'id': json_safe(value.id), 'database': value.database}
    if isinstance(value, (bson.Regex, re.Pattern)):
        return value.pattern if isinstance(value.pattern, str) else value.pattern.decode('utf-8', 'replace')
    if isinstance(value, bson.MinKey):
        return 'MinKey'
    if isinstance(value, bson.MaxKey):
        return 'MaxKey'
    return str(value)  # ObjectId, Decimal128, UUID and anything else: the string form


def _collection_name(collection):
    return f'{collection.database.name}.{collection.name}'


class _CheckpointedSource(Source):
    """What both collection sources share: a checkpoint, appending with it, :attr:`ready` and :attr:`stopped`."""

    def __init__(self, collection, size, checkpoint):
        super().__init__()
        if not all(hasattr(collection, attr) for attr in ('find', 'database', 'name')):
            raise ConfigurationError(f'{type(self).__name__} needs a pymongo Collection, got {collection!r:.100}')
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f'size must be an integer >= 1, got {size!r}')
        self.collection = collection
        self.size = size
        self.checkpoint = StreamCheckpoint(checkpoint or self.default_checkpoint())
        self.position = None  # the position of the last append, once known

    def default_checkpoint(self):
        raise NotImplementedError

    def reset(self, stream):
        """Forget the saved position for ``stream``: the next start begins afresh.

        Call it while the source is not running.
        """
        self.checkpoint.clear(stream)
        self.position = None

    def _resume(self, stream):
        if self.position is None:
            self.position = self.checkpoint.load(stream)
        return self.position

    def _append(self, stream, messages, position, raw):
        """Append ``messages``, then save ``position``: at least once, never lost."""
        if messages:
            try:
                stream.append(messages if len(messages) > 1 or self.size > 1 else messages[0])
            except InvalidMessage as exc:
                # json_safe() makes this unlikely; if it happens, keep the documents rather than stall
                origin = _collection_name(self.collection)
                logger.warning('%s: documents from %s rejected into the dead letters of %r: %s',
                               self, origin, stream.name, exc)
                stream.reject([{'payload': json_util.dumps(doc), 'origin': origin} for doc in raw], str(exc))
            stream.flush()  # a batching stream: the data must be written before the position
        self.position = position
        self.checkpoint.save(stream, position)
        self.progress()

    def __repr__(self):
        return f'{type(self).__name__}({_collection_name(self.collection)})'


# -- polling source --------------------------------------------------------
class MongoSource(_CheckpointedSource):
    """Appends the documents of a collection, oldest id first, and then each new one.

    :param collection: a pymongo ``Collection``
    :param size: documents read per query. ``size=1`` appends each document
        as one message; a larger size appends the documents of each read as
        one list (one write)
    :param idcol: the field that orders the documents (default ``'_id'``);
        only documents that have it are read. Give it an index.
    :param delay: seconds to wait when there is nothing new
    :param query: an optional filter the documents must also match
    :param checkpoint: the name under which the position is kept in the
        stream's status; default ``'MongoSource:<db>.<collection>:<idcol>'``.
        Give two sources of the same collection and stream different names.

    The first start reads the collection from the beginning; later starts,
    even by a new source object, continue after the last appended document.
    Each message is the document converted by :func:`json_safe` (so ``_id``
    becomes a string). :attr:`ready` is set while queries succeed,
    :attr:`stopped` once ``stream()`` has returned.

    Polling by id finds every document only if ids grow in the order
    documents are committed. That holds for a single writer, or for integer
    ids handed out in order; ObjectIds of *several* writers are ordered only
    to the second (then by a random part per process), so a document written
    in the same second as, but committed after, one with a greater id is
    skipped. With concurrent writers use :class:`MongoReplicasetSource`.
    """

    def __init__(self, collection, size=1, idcol=None, delay=.1, query=None, checkpoint=None):
        self.idcol = idcol or '_id'
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ConfigurationError(f'delay must be a number of seconds >= 0, got {delay!r}')
        if query is not None and not isinstance(query, dict):
            raise ConfigurationError(f'query must be a dict (a MongoDB filter), got {query!r:.100}')
        self.delay = delay
        self.query = query
        super().__init__(collection, size, checkpoint)

    def default_checkpoint(self):
        return f'MongoSource:{_collection_name(self.collection)}:{self.idcol}'

    def messages(self, doc):
        """The messages one document becomes: ``[json_safe(doc)]``. Subclasses may split or filter."""
        return [json_safe(doc)]

    def run(self, stream):
        self._resume(stream)
        try:
            while not self.cancelled:
                after = {'$exists': True} if self.position is None else {'$gt': self.position}
                selector = {self.idcol: after}
                if self.query:
                    selector = {'$and': [self.query, selector]}
                docs = list(self.collection.find(selector).sort(self.idcol, 1).limit(self.size))
                self.ready.set()
                if not docs:
                    self.progress()  # the query worked: a later failure starts with a short backoff
                    self._cancelled.wait(self.delay)
                    continue
                messages = [message for doc in docs for message in self.messages(doc)]
                self._append(stream, messages, docs[-1][self.idcol], docs)
        finally:
            self.ready.clear()


# -- change stream source --------------------------------------------------
class ChangeStreamEnded(RuntimeError):
    """The server closed the change stream (the collection was dropped or renamed)."""


class MongoReplicasetSource(_CheckpointedSource):
    """Appends the changes of a collection as its change stream reports them.

    :param collection: a pymongo ``Collection`` on a replica set (or any
        server with change streams)
    :param size: at most this many changes per append; changes that are
        already waiting are appended together, as one list, when ``size > 1``
    :param operations: the change types to follow, default ``('insert',)``
    :param change_events: False (default): each message is the document
        after the change (``fullDocument``; updates are looked up with
        ``full_document='updateLookup'``, and an update whose document is
        gone by then is skipped). True: each message is the whole change
        event (``operationType``, ``documentKey``, ``fullDocument``, ...), which
        is what ``delete`` and other document-less operations need.
    :param pipeline: further aggregation stages after the operation filter
    :param max_await: seconds the server waits for a change per request (how
        quickly ``cancel()`` takes effect)
    :param checkpoint: the name of the position in the stream's status;
        default ``'MongoReplicasetSource:<db>.<collection>'``
    :param idcol, delay: accepted for 0.6's signature
        ``MongoReplicasetSource(collection, size=1, idcol=None, delay=.1)`` and
        not used: a change stream needs neither an id order nor a polling pause
    :param watch_kwargs: passed to ``collection.watch()`` (``batch_size``,
        ``collation``, ``full_document``, ...). ``resume_after``,
        ``start_after`` or ``start_at_operation_time`` apply only when no
        position is saved yet.

    The first start follows changes from the moment the change stream opens;
    its resume token is saved at once, so changes made while the source is
    down are not lost. Later starts, even by a new source object, resume
    after the last appended change (``resume_after``). :attr:`ready` is set
    while the change stream is open, :attr:`stopped` once ``stream()`` has returned.

    If the server can no longer resume (the oplog moved past the saved token,
    or the collection was dropped), the source logs the error and retries with
    a growing backoff; call :meth:`reset` to start over from now.
    """
    DOCUMENT_OPERATIONS = ('insert', 'update', 'replace')

    def __init__(self, collection, size=1, idcol=None, delay=.1, *, operations=('insert',), change_events=False,
                 pipeline=None, max_await=0.5, checkpoint=None, **watch_kwargs):
        if isinstance(operations, str):
            operations = (operations,)
        operations = tuple(operations)
        if not operations:
            raise ConfigurationError('operations must name at least one change type, e.g. ("insert",)')
        if not change_events and not set(operations) <= set(self.DOCUMENT_OPERATIONS):
            raise ConfigurationError(f'operations {sorted(set(operations) - set(self.DOCUMENT_OPERATIONS))} carry '
                                     'no document; pass change_events=True to receive the change events')
        if isinstance(max_await, bool) or not isinstance(max_await, (int, float)) or max_await <= 0:
            raise ConfigurationError(f'max_await must be a number of seconds > 0, got {max_await!r}')
        self.operations = operations
        self.change_events = change_events
        self.pipeline = list(pipeline or [])
        self.max_await = max_await
        if 'update' in operations and not change_events:
            watch_kwargs.setdefault('full_document', 'updateLookup')
        self.watch_kwargs = watch_kwargs
        super().__init__(collection, size, checkpoint)

    def default_checkpoint(self):
        return f'MongoReplicasetSource:{_collection_name(self.collection)}'

    def messages(self, change):
        """The messages one change event becomes (none for a document that is gone)."""
        if self.change_events:
            return [json_safe(change)]
        document = change.get('fullDocument')
        return [json_safe(document)] if document is not None else []

    def run(self, stream):
        token = self._resume(stream)
        kwargs = {key: value for key, value in self.watch_kwargs.items()
                  if token is None or key not in ('resume_after', 'start_after', 'start_at_operation_time')}
        if token is not None:
            kwargs['resume_after'] = token
        pipeline = [{'$match': {'operationType': {'$in': list(self.operations)}}}] + self.pipeline
        with self.collection.watch(pipeline, max_await_time_ms=int(self.max_await * 1000), **kwargs) as changes:
            if token is None and changes.resume_token is not None:
                # remember the start, so that changes made while the source is down are not lost
                self.position = changes.resume_token
                self.checkpoint.save(stream, self.position)
            self.ready.set()
            self.progress()
            try:
                self._follow(stream, changes)
            finally:
                self.ready.clear()

    def _follow(self, stream, changes):
        while not self.cancelled:
            batch = []
            while len(batch) < self.size and not self.cancelled:
                change = changes.try_next()
                if change is None:
                    break
                batch.append(change)
            if batch:
                messages = [message for change in batch for message in self.messages(change)]
                self._append(stream, messages, batch[-1]['_id'], batch)
            if not changes.alive and not self.cancelled:
                raise ChangeStreamEnded(f'the change stream of {_collection_name(self.collection)} was closed '
                                        'by the server (collection dropped or renamed?)')


# -- sink ------------------------------------------------------------------
class MongoSinkError(SinkError):
    """MongoDB refused or failed a write of the sink; the pymongo error is its ``__cause__``."""


class MongoSink(Sink):
    """Writes each window's result into a collection.

    :param collection: a pymongo ``Collection``
    :param key: None (default): insert the documents; a field name such as
        ``'_id'``: replace the document with the same value of that field, or
        insert it (an upsert), so that a window delivered twice writes once

    ``put(data)`` takes a dict (one document) or a list of dicts (written in
    order, in one round trip) and returns how many it wrote; an empty list
    writes nothing. The documents are copied, never changed. The write is
    acknowledged (a collection configured with ``w=0`` is written with
    ``w=1``) before ``put`` returns, and any failure raises
    :class:`MongoSinkError` (pymongo's error, a duplicate key say, is its
    ``__cause__`` and in its message), so the window is retried and finally
    dead-lettered. An ordered multi-document insert that fails half way keeps
    the documents before the failure; with ``key=`` the retry simply writes
    them again. A :class:`~minibatch.contrib.base.Sink`.
    """
    error = MongoSinkError

    def __init__(self, collection, key=None):
        if not hasattr(collection, 'insert_many'):
            raise ConfigurationError(f'MongoSink needs a pymongo Collection, got {collection!r:.100}')
        if not collection.write_concern.acknowledged:
            collection = collection.with_options(write_concern=WriteConcern(w=1))
        self.collection = collection
        self.key = key

    def prepare(self, doc):
        """A copy of ``doc`` (pymongo adds ``_id`` to what it inserts); InvalidMessage without the key field."""
        doc = dict(super().prepare(doc))
        if self.key is not None and self.key not in doc:
            raise InvalidMessage(f'MongoSink(key={self.key!r}): a document has no {self.key!r}: {doc!r:.200}')
        return doc

    def write(self, docs):
        """Insert (or, with ``key``, upsert) the documents in order, acknowledged."""
        if self.key is not None:
            self.collection.bulk_write([ReplaceOne({self.key: doc[self.key]}, doc, upsert=True) for doc in docs],
                                       ordered=True)
        elif len(docs) == 1:
            self.collection.insert_one(docs[0])
        else:
            self.collection.insert_many(docs, ordered=True)
        return len(docs)

    def __repr__(self):
        return f'MongoSink({_collection_name(self.collection)})'
