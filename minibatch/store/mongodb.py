"""The MongoDB store: the production backend.

Collections ``stream``, ``buffer`` and ``window`` of the URL's database
(default ``minibatch``), on the mongoengine connection alias ``'minibatch'``
so that :class:`minibatch.models.Buffer` and friends query the same data.

Every hot-path operation is one batch round trip: a window is a sorted
``find().limit(n)`` plus one ``update_many`` with ``$in``, never a
``findAndModify`` per message. Claims filter on ``state: 'available'``, which
makes ``update_many`` atomic per message: of two consumers racing for a
message exactly one modifies it.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import bson
import mongoengine.connection as me_connection
import pymongo
from bson.raw_bson import RawBSONDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from minibatch.errors import ConfigurationError, InvalidMessage, StoreUnavailable
from minibatch.store.base import (AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Doc, Message, RecordId,
                                  StatusPath, Store, StreamInfo, Waiter, WindowRecord, utcnow)

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = 'minibatch'
#: fail within this time when the server cannot be reached, instead of pymongo's 30 s
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
ALIAS = 'minibatch'

AliasKey = tuple[str, tuple[tuple[str, str], ...]]
_aliases: dict[AliasKey, str] = {}   # (url, options) -> mongoengine alias used for it
_alias_pids: dict[str, int] = {}     # alias -> pid that opened its client
_alias_lock = threading.Lock()
_private_aliases = itertools.count(1)


def _alias_for(key: AliasKey) -> str:
    """The alias of the client for ``key`` (call under ``_alias_lock``).

    Alias ``'minibatch'``, the one the Documents use (``Buffer.objects``), is
    taken by any client that connects while no connection is registered under
    it: the first store of the process, and again after the store holding it
    closed or the user called ``mongoengine.disconnect(alias='minibatch')``.
    Other clients get a private alias.
    """
    alias = _aliases.get(key)
    if alias != ALIAS and ALIAS not in me_connection._connection_settings:
        for other, other_alias in list(_aliases.items()):
            if other_alias == ALIAS:
                del _aliases[other]  # its holder disconnected: it reconnects under a private alias
        if alias is not None and alias in me_connection._connection_settings:
            me_connection.disconnect(alias)  # our old private client, replaced by the shared one
        alias = _aliases[key] = ALIAS
    elif alias is None:
        alias = _aliases[key] = f'{ALIAS}-{next(_private_aliases)}'
    return alias


def redact(url: str) -> str:
    """``url`` without its password, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(':' + parts.password + '@', ':***@')
        return parts._replace(netloc=netloc).geturl()
    return url


def _unavailable(store: MongoStore, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f'cannot reach MongoDB at {redact(store.url)} '
                            f'(waited {store.timeout_ms / 1000:g} s for a server): {exc}')


_P = ParamSpec('_P')
_R = TypeVar('_R')


def _translate_errors(
        method: Callable[Concatenate[MongoStore, _P], _R]) -> Callable[Concatenate[MongoStore, _P], _R]:
    """Turn "no server" into StoreUnavailable; other driver errors pass unchanged."""
    @functools.wraps(method)
    def wrapper(self: MongoStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except pymongo.errors.ServerSelectionTimeoutError as exc:
            raise _unavailable(self, exc) from exc
    return wrapper


# Operations on listed messages look them up by _id: a planner may otherwise walk
# a (stream, ...) index over the whole stream (the MongoDB-wire test server does
# a collection scan for an $in combined with other fields unless told).
BY_ID = [('_id', 1)]


class MongoStore(Store):
    """Store on MongoDB (or any server speaking its wire protocol with the same semantics)."""
    querysets = True
    # AutoReconnect covers a dropped connection and a failed server selection
    transient_errors = (ConnectionError, pymongo.errors.AutoReconnect)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parts = urlsplit(url)
        self.database = parts.path.lstrip('/') or DEFAULT_DATABASE
        if '/' in self.database:
            raise ConfigurationError(f'bad MongoDB database name in {redact(url)!r}')
        self.client_options: dict[str, Any] = dict(options)
        # the URL's own options win over our defaults (a keyword argument would override the URL)
        in_url = {key.lower(): value for key, value in parse_qsl(parts.query)}
        if 'serverselectiontimeoutms' not in in_url:
            self.client_options.setdefault('serverSelectionTimeoutMS', DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
        if 'uuidrepresentation' not in in_url:
            self.client_options.setdefault('uuidRepresentation', 'standard')
        if parts.username and 'authsource' not in in_url and not parts.scheme.endswith('+srv'):
            # as minibatch 0.6: users authenticate against 'admin' unless the URL says otherwise
            # (pymongo alone would use the URL's database); +srv URLs get it from DNS
            self.client_options.setdefault('authSource', 'admin')
        self.timeout_ms = int(self.client_options.get('serverSelectionTimeoutMS')
                              or in_url.get('serverselectiontimeoutms') or DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
        # one client per URL and options: options given here must reach the driver
        self._alias_key: AliasKey = (url, tuple(sorted((k, repr(v)) for k, v in self.client_options.items())))
        self.alias: str | None = None  # chosen when connecting (see _alias_for)
        self._indexed = False

    # -- connection -------------------------------------------------------
    def connect(self) -> Any:
        """Register the mongoengine alias (again, after a disconnect or a fork) and return the database."""
        pid = os.getpid()
        with _alias_lock:
            self.alias = _alias_for(self._alias_key)  # a new one if close() gave it up
            if _alias_pids.get(self.alias) not in (None, pid):
                # inherited from the parent process: drop the references without
                # closing, since closing would end sessions on sockets the parent still uses
                me_connection._connections.pop(self.alias, None)
                me_connection._dbs.pop(self.alias, None)
                me_connection._connection_settings.pop(self.alias, None)
                _reset_document_collections()
            if self.alias not in me_connection._connection_settings:
                me_connection.register_connection(self.alias, host=self.url, db=self.database,
                                                  **self.client_options)
                _reset_document_collections()
            _alias_pids[self.alias] = pid
            return me_connection.get_db(self.alias)

    def _db(self) -> Any:
        if (self.alias is not None and _alias_pids.get(self.alias) == os.getpid()
                and self.alias in me_connection._dbs and _aliases.get(self._alias_key) == self.alias):
            return me_connection._dbs[self.alias]
        return self.connect()

    def queryset(self, document: Any) -> Any:
        """A mongoengine queryset of ``document`` (Buffer, Window, Stream) over this store's collection.

        Built on the collection itself rather than on a connection alias, so it
        reads this store's database whatever the alias ``'minibatch'`` points at.
        """
        from mongoengine.queryset import QuerySet
        return QuerySet(document, self._db()[document._meta['collection']])

    def _collections(self) -> tuple[Any, Any, Any]:
        db = self._db()
        if not self._indexed:
            self._ensure_indexes(db)
        return db['stream'], db['buffer'], db['window']

    def _buffer(self) -> Any:
        return self._collections()[1]

    def _ensure_indexes(self, db: Any) -> None:
        try:
            db['buffer'].create_index([('stream', 1), ('processed', 1), ('_id', 1)], name='mb_available')
            db['buffer'].create_index([('stream', 1), ('state', 1), ('lease', 1)], name='mb_state_lease')
            db['window'].create_index([('stream', 1), ('processed', 1)], name='mb_window')
            try:
                db['stream'].create_index([('name', 1)], name='mb_name_unique', unique=True)
            except OperationFailure as exc:
                # data written by minibatch < 1.0 may hold duplicate names; keep working without the constraint
                logger.warning('minibatch: cannot make stream names unique (%s); using a plain index', exc)
                db['stream'].create_index([('name', 1)], name='mb_name')
        except pymongo.errors.ServerSelectionTimeoutError as exc:
            raise _unavailable(self, exc) from exc
        self._indexed = True

    def close(self) -> None:
        with _alias_lock:
            if self.alias is not None and _alias_pids.get(self.alias) == os.getpid():
                me_connection.disconnect(self.alias)
                _alias_pids.pop(self.alias, None)
                if _aliases.get(self._alias_key) == self.alias:
                    del _aliases[self._alias_key]  # frees 'minibatch' for the next store that connects
        self._indexed = False

    def describe(self) -> str:
        return f'{redact(self.url)} (MongoDB, database {self.database!r})'

    # -- streams ----------------------------------------------------------
    @staticmethod
    def _info(doc: Any) -> StreamInfo:
        return StreamInfo(name=doc['name'], created=doc.get('created'), last_read=doc.get('last_read'),
                          interval=doc.get('interval', 1.0), closed=doc.get('closed', False),
                          max_age=doc.get('max_age'), status=doc.get('status') or {})

    @_translate_errors
    def ensure_stream(self, name: str, **defaults: Any) -> StreamInfo:
        streams = self._collections()[0]
        now = utcnow()
        updates = {k: defaults.pop(k) for k in ('interval', 'max_age') if defaults.get(k) is not None}
        defaults = {k: v for k, v in defaults.items() if v is not None}
        on_insert = {'created': now, 'last_read': now, 'interval': 1.0, 'closed': False, 'status': {},
                     **defaults}
        for key in updates:
            on_insert.pop(key, None)
        update: dict[str, Any] = {'$setOnInsert': on_insert}
        if updates:
            update['$set'] = updates
        for _ in range(2):
            try:
                doc = streams.find_one_and_update({'name': name}, update, upsert=True,
                                                  return_document=pymongo.ReturnDocument.AFTER)
            except DuplicateKeyError:
                continue  # lost a creation race to another process: the record exists now
            if doc is not None:  # some wire-compatible servers answer None to a racing upsert
                return self._info(doc)
        doc = streams.find_one({'name': name})
        if doc is None:
            raise OperationFailure(f'could not create or find stream {name!r}')
        return self._info(doc)

    @_translate_errors
    def get_stream(self, name: str) -> StreamInfo | None:
        doc = self._collections()[0].find_one({'name': name})
        return self._info(doc) if doc else None

    @_translate_errors
    def list_streams(self) -> list[StreamInfo]:
        return [self._info(doc) for doc in self._collections()[0].find({}).sort('name', 1)]

    @_translate_errors
    def update_stream(self, name: str, **fields: Any) -> None:
        self._collections()[0].update_one({'name': name}, {'$set': fields})

    @_translate_errors
    def set_status(self, name: str, path: StatusPath, value: Any) -> None:
        field = 'status.' + '.'.join(self._check_status_path(path))
        update = {'$unset': {field: ''}} if value is None else {'$set': {field: value}}
        try:
            self._collections()[0].update_one({'name': name}, update)
        except bson.errors.InvalidDocument as exc:
            raise InvalidMessage(f'status value cannot be stored: {exc}') from exc

    @_translate_errors
    def compare_and_set_last_read(self, name: str, expected: datetime.datetime | None,
                                  new: datetime.datetime) -> bool:
        result = self._collections()[0].update_one({'name': name, 'last_read': expected},
                                                   {'$set': {'last_read': new}})
        return result.modified_count == 1

    @_translate_errors
    def delete_stream(self, name: str) -> None:
        streams, buffer, windows = self._collections()
        buffer.delete_many({'stream': name})
        windows.delete_many({'stream': name})
        self._db()['consumer'].delete_many({'stream': name})
        streams.delete_many({'name': name})

    @_translate_errors
    def clear(self, name: str) -> int:
        _, buffer, windows = self._collections()
        removed = buffer.delete_many({'stream': name}).deleted_count
        windows.delete_many({'stream': name})
        return removed

    # -- producing --------------------------------------------------------
    def _encode(self, name: str, docs: Sequence[Doc], now: datetime.datetime) -> list[RawBSONDocument]:
        raw = []
        for i, data in enumerate(docs):
            if not isinstance(data, dict):
                raise InvalidMessage(f'a stream message must be a dict, got {type(data).__name__}: {data!r:.200}')
            try:
                raw.append(RawBSONDocument(bson.encode({
                    '_id': bson.ObjectId(), 'stream': name, 'created': now, 'data': data,
                    'processed': False, 'state': AVAILABLE, 'attempts': 0})))
            except (bson.errors.InvalidDocument, TypeError, OverflowError) as exc:
                where = f' (message {i} of the batch)' if len(docs) > 1 else ''
                raise InvalidMessage(f'message cannot be stored in MongoDB{where}: {exc}; '
                                     f'message: {data!r:.200}') from exc
        return raw

    def validate(self, docs: Iterable[Doc]) -> None:
        self._encode('-', list(docs), utcnow())

    @_translate_errors
    def append(self, name: str, docs: Sequence[Doc]) -> list[RecordId]:
        docs = self._batch(docs, 'append')
        if not docs:
            return []
        raw = self._encode(name, docs, utcnow())  # all encoded before anything is sent
        buffer = self._buffer()
        if len(raw) == 1:
            buffer.insert_one(raw[0])
        else:
            buffer.insert_many(raw, ordered=True)
        return [doc['_id'] for doc in raw]

    @_translate_errors
    def append_dead(self, name: str, docs: Sequence[Doc], error: str) -> list[RecordId]:
        docs = self._batch(docs, 'append_dead')
        if not docs:
            return []
        self._encode(name, docs, utcnow())  # validates the whole batch before anything is sent
        now = utcnow()
        records = [{'_id': bson.ObjectId(), 'stream': name, 'created': now, 'data': data, 'processed': True,
                    'state': DEAD, 'attempts': 0, 'error': str(error)} for data in docs]
        self._buffer().insert_many(records, ordered=True)
        return [doc['_id'] for doc in records]

    # -- consuming --------------------------------------------------------
    @staticmethod
    def _message(doc: Any) -> Message:
        return Message(id=doc['_id'], stream=doc['stream'], created=doc.get('created'), data=doc.get('data'),
                       state=doc.get('state', AVAILABLE if not doc.get('processed') else DONE),
                       attempts=doc.get('attempts', 0), error=doc.get('error'))

    @_translate_errors
    def find_available(self, name: str, limit: int | None = None,
                       until: datetime.datetime | None = None) -> list[Message]:
        query: dict[str, Any] = {'stream': name, 'processed': False}
        if until is not None:
            query['created'] = {'$lt': until}
        cursor = self._buffer().find(query).sort('_id', 1)
        if limit:
            cursor = cursor.limit(limit)
        return [self._message(doc) for doc in cursor]

    @_translate_errors
    def claim(self, name: str, ids: Sequence[RecordId | Message], token: str, lease: float) -> list[Message]:
        if not ids:
            return []
        known = {m.id: m for m in ids if isinstance(m, Message)}
        ids = [m.id if isinstance(m, Message) else m for m in ids]
        buffer = self._buffer()
        result = buffer.update_many(
            {'_id': {'$in': ids}, 'stream': name, 'state': AVAILABLE},
            {'$set': {'processed': True, 'state': CLAIMED, 'claim': token, 'lease': _after(lease)}}, hint=BY_ID)
        if result.modified_count == 0:
            return []  # another consumer was first: nothing to read back
        if result.modified_count == len(ids) and len(known) == len(ids):
            claimed = [known[i] for i in ids]
        else:
            # lost some to another consumer, or we lack the data: read back what is ours
            claimed = [self._message(doc) for doc in buffer.find({'_id': {'$in': ids}, 'claim': token}, hint=BY_ID)]
        for message in claimed:
            message.state = CLAIMED
            message.token = token
        claimed.sort(key=lambda m: m.id)
        return claimed

    @_translate_errors
    def renew(self, name: str, token: str, lease: float) -> int:
        result = self._buffer().update_many({'stream': name, 'state': CLAIMED, 'claim': token},
                                            {'$set': {'lease': _after(lease)}})
        return result.matched_count

    @_translate_errors
    def commit(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
               window_id: RecordId | None = None) -> int:
        query = {'_id': {'$in': list(ids)}, 'claim': token, 'state': CLAIMED}
        _, buffer, windows = self._collections()
        if not ids:
            count = 0
        elif keep:
            count = buffer.update_many(query, {'$set': {'state': DONE, 'done': utcnow()},
                                               '$unset': {'claim': '', 'lease': ''}}, hint=BY_ID).modified_count
        else:
            count = buffer.delete_many(query, hint=BY_ID).deleted_count
        if window_id is not None:
            # a second round trip: a transaction would need a replica set, and a window
            # record left unmarked after a crash here is harmless (its messages are committed)
            windows.update_one({'_id': window_id}, {'$set': {'processed': True}})
        return count

    @_translate_errors
    def release(self, name: str, token: str, ids: Sequence[RecordId], error: object = None,
                max_attempts: int = 3, backoff: float = 0.0) -> tuple[int, int]:
        buffer = self._buffer()
        query = {'_id': {'$in': list(ids)}, 'claim': token, 'state': CLAIMED}
        error = _error_text(error)
        dead = buffer.update_many(
            {**query, 'attempts': {'$gte': max_attempts - 1}},
            {'$set': {'state': DEAD, 'error': error, 'failed': utcnow()}, '$inc': {'attempts': 1},
             '$unset': {'claim': '', 'lease': ''}}, hint=BY_ID).modified_count
        if backoff > 0:
            retry = {'$set': {'state': RETRY, 'error': error, 'lease': _after(backoff)}, '$inc': {'attempts': 1}}
        else:
            retry = {'$set': {'state': AVAILABLE, 'processed': False, 'error': error}, '$inc': {'attempts': 1},
                     '$unset': {'claim': '', 'lease': ''}}
        retried = buffer.update_many(query, retry, hint=BY_ID).modified_count
        return retried, dead

    @_translate_errors
    def unclaim(self, name: str, token: str, ids: Sequence[RecordId]) -> int:
        return self._buffer().update_many(
            {'_id': {'$in': list(ids)}, 'claim': token, 'state': CLAIMED},
            {'$set': {'state': AVAILABLE, 'processed': False}, '$unset': {'claim': '', 'lease': ''}},
            hint=BY_ID).modified_count

    @_translate_errors
    def expire_leases(self, name: str, max_attempts: int = 3) -> int:
        buffer = self._buffer()
        now = utcnow()
        to_available: dict[str, Any] = {'$set': {'state': AVAILABLE, 'processed': False},
                                        '$unset': {'claim': '', 'lease': ''}}
        changed = buffer.update_many({'stream': name, 'state': RETRY, 'lease': {'$lt': now}},
                                     to_available).modified_count
        expired = {'stream': name, 'state': CLAIMED, 'lease': {'$lt': now}}
        reason = 'lease expired: the consumer died or hung while holding this message'
        changed += buffer.update_many(
            {**expired, 'attempts': {'$gte': max_attempts - 1}},
            {'$set': {'state': DEAD, 'error': reason, 'failed': now}, '$inc': {'attempts': 1},
             '$unset': {'claim': '', 'lease': ''}}).modified_count
        changed += buffer.update_many(
            expired, {**to_available, '$set': {**to_available['$set'], 'error': reason},
                      '$inc': {'attempts': 1}}).modified_count
        return changed

    # -- dead letters -----------------------------------------------------
    @_translate_errors
    def requeue(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        query: dict[str, Any] = {'stream': name, 'state': DEAD}
        hint: list[tuple[str, int]] | None = None
        if ids is not None:
            query['_id'], hint = {'$in': list(ids)}, BY_ID
        return self._buffer().update_many(query, {'$set': {'state': AVAILABLE, 'processed': False, 'attempts': 0},
                                                  '$unset': {'error': '', 'failed': ''}}, hint=hint).modified_count

    @_translate_errors
    def purge_dead(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        query: dict[str, Any] = {'stream': name, 'state': DEAD}
        hint: list[tuple[str, int]] | None = None
        if ids is not None:
            query['_id'], hint = {'$in': list(ids)}, BY_ID
        return self._buffer().delete_many(query, hint=hint).deleted_count

    # -- windows ----------------------------------------------------------
    @_translate_errors
    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None) -> RecordId:
        doc = {'stream': name, 'created': utcnow(), 'data': data, 'processed': False, 'query': query or []}
        return self._collections()[2].insert_one(doc).inserted_id

    @_translate_errors
    def windows(self, name: str, processed: bool | None = None) -> list[WindowRecord]:
        query: dict[str, Any] = {'stream': name}
        if processed is not None:
            query['processed'] = processed
        return [WindowRecord(id=doc['_id'], stream=doc['stream'], created=doc.get('created'),
                             data=doc.get('data', []), processed=doc.get('processed', False),
                             query=doc.get('query', []))
                for doc in self._collections()[2].find(query).sort('_id', 1)]

    # -- inspection and housekeeping --------------------------------------
    @_translate_errors
    def messages(self, name: str, state: str | None = None, limit: int | None = None) -> list[Message]:
        query: dict[str, Any] = {'stream': name}
        if state is not None:
            query['state'] = state
        cursor = self._buffer().find(query).sort('_id', 1)
        return [self._message(doc) for doc in (cursor.limit(limit) if limit else cursor)]

    @_translate_errors
    def counts(self, name: str) -> dict[str, int]:
        _, buffer, windows = self._collections()
        counts = dict.fromkeys(STATES, 0)
        for row in buffer.aggregate([{'$match': {'stream': name}}, {'$group': {'_id': '$state', 'n': {'$sum': 1}}}]):
            state = row['_id'] if row['_id'] in counts else AVAILABLE
            counts[state] += row['n']
        counts['windows'] = windows.count_documents({'stream': name})
        record = self._collections()[0].find_one({'name': name}, {'expired': 1}) or {}
        counts['expired'] = int(record.get('expired') or 0)
        return counts

    @_translate_errors
    def housekeep(self, name: str, max_age: float) -> tuple[int, int]:
        cutoff = utcnow() - datetime.timedelta(seconds=max_age)
        streams, buffer, windows = self._collections()
        expired = buffer.delete_many({'stream': name, 'state': {'$in': [AVAILABLE, RETRY]},
                                      'created': {'$lt': cutoff}}).deleted_count
        if expired:
            # not in the delete's transaction: a crash right here under-counts, never drops data unseen twice
            streams.update_one({'name': name}, {'$inc': {'expired': expired}})
        removed = buffer.delete_many({'stream': name, 'state': DONE, 'created': {'$lt': cutoff}}).deleted_count
        removed += windows.delete_many({'stream': name, 'processed': True, 'created': {'$lt': cutoff}}).deleted_count
        return removed + expired, expired

    # -- consumers --------------------------------------------------------
    @_translate_errors
    def heartbeat(self, name: str, consumer: str, info: Mapping[str, Any]) -> None:
        record = {**dict(info), 'stream': name, 'consumer': str(consumer), 'seen': utcnow()}
        try:
            self._db()['consumer'].replace_one({'_id': f'{name}\x00{consumer}'}, record, upsert=True)
        except bson.errors.InvalidDocument as exc:
            raise InvalidMessage(f'consumer info of {consumer!r} cannot be stored: {exc}') from exc

    @_translate_errors
    def consumers(self, name: str) -> list[dict[str, Any]]:
        cursor = self._db()['consumer'].find({'stream': name}).sort('consumer', 1)
        records = []
        for doc in cursor:
            doc.pop('_id'), doc.pop('stream')
            doc['id'] = doc.pop('consumer')
            records.append(doc)
        return records

    @_translate_errors
    def forget_consumers(self, name: str, older_than: float) -> int:
        cutoff = utcnow() - datetime.timedelta(seconds=older_than)
        return self._db()['consumer'].delete_many({'stream': name, 'seen': {'$lt': cutoff}}).deleted_count

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name: str) -> ChangeStreamWaiter:
        return ChangeStreamWaiter(self, name)


class ChangeStreamWaiter(Waiter):
    """Wakes on inserts into the stream, via a MongoDB change stream watched in a thread.

    Servers without change streams (a standalone mongod) make the thread exit
    after one try; ``wait()`` then just sleeps, and the consumer polls.
    """
    #: how long the server holds each getMore of the change stream (an event ends it at once):
    #: bounds the queries of an idle consumer to one per this period
    MAX_AWAIT_MS = 3000
    # push wake-ups until the server turns out to have no change streams (see _watch);
    # appends only: a retry or requeue coming due needs the consumer's own polls
    supported = True
    sees_all_changes = False
    store: MongoStore

    def __init__(self, store: MongoStore, stream: str) -> None:
        super().__init__(store, stream)
        self._event = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f'minibatch-watch-{stream}', daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pipeline = [{'$match': {'operationType': 'insert', 'fullDocument.stream': self.stream}}]
        while not self._closed.is_set():
            try:
                with self.store._buffer().watch(pipeline, max_await_time_ms=self.MAX_AWAIT_MS) as changes:
                    while not self._closed.is_set():
                        if changes.try_next() is not None:
                            self._event.set()
            except OperationFailure as exc:
                logger.info('minibatch: change streams unavailable on %s (%s); polling instead',
                            self.store.describe(), exc)
                self.supported = False
                return
            except (ConnectionFailure, PyMongoError, StoreUnavailable) as exc:
                logger.debug('minibatch: change stream interrupted (%s); retrying', exc)
                self._event.set()  # something may have been missed: let the consumer look
                self._closed.wait(1.0)

    def wait(self, timeout: float) -> bool:
        if not self.supported:
            return super().wait(timeout)
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke

    def close(self) -> None:
        self._closed.set()


def _after(seconds: float) -> datetime.datetime:
    return utcnow() + datetime.timedelta(seconds=seconds)


def _error_text(error: object) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return f'{type(error).__name__}: {error}'


def _reset_document_collections() -> None:
    # mongoengine caches collection objects per Document class; after a
    # reconnect they would point at the old client. The Documents on our alias
    # (minibatch.models' and any of the user's) are found in mongoengine's
    # registry, so the store need not import the models (layers point one way).
    from mongoengine.base import _document_registry
    for document in list(_document_registry.values()):
        if getattr(document, '_meta', {}).get('db_alias') == ALIAS and hasattr(document, '_collection'):
            document._collection = None
