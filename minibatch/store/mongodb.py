"""The MongoDB store: the production backend.

Collections ``stream``, ``buffer`` and ``window`` of the URL's database
(default ``minibatch``), on the mongoengine connection alias ``'minibatch'``
so that :class:`minibatch.models.Buffer` and friends query the same data.

Every hot-path operation is one batch round trip: a window is a sorted
``find().limit(n)`` plus one ``update_many`` with ``$in``, never a
``findAndModify`` per message. Claims filter on ``state: 'available'``, which
makes ``update_many`` atomic per message: of two consumers racing for a
message exactly one modifies it.

This module holds the queries. Connecting (URL, client options, the
mongoengine alias, reconnecting after a fork) is in
:mod:`minibatch.store.mongodb_connection`; the change-stream waiter that wakes
idle consumers is in :mod:`minibatch.store.mongodb_waiter`. Their public names
(``ChangeStreamWaiter``, ``redact``, the defaults) stay importable from here.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import bson
import pymongo
from bson.raw_bson import RawBSONDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from minibatch.errors import InvalidMessage
from minibatch.store.base import (AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Doc, Message, RecordId,
                                  StatusPath, StreamInfo, WindowRecord, utcnow)
from minibatch.store.mongodb_connection import (ALIAS, DEFAULT_DATABASE,  # noqa: F401 (re-exported)
                                                DEFAULT_SERVER_SELECTION_TIMEOUT_MS, MongoConnection,
                                                _translate_errors, _unavailable, redact)
from minibatch.store.mongodb_waiter import ChangeStreamWaiter
from minibatch.store.records import shape_problem

logger = logging.getLogger(__name__)


# Operations on listed messages look them up by _id: a planner may otherwise walk
# a (stream, ...) index over the whole stream (the MongoDB-wire test server does
# a collection scan for an $in combined with other fields unless told).
BY_ID = [('_id', 1)]


class MongoStore(MongoConnection):
    """Store on MongoDB (or any server speaking its wire protocol with the same semantics).

    Connecting (the URL, the client, the mongoengine alias) is inherited from
    :class:`~minibatch.store.mongodb_connection.MongoConnection`; this class
    holds the queries.
    """
    querysets = True
    # AutoReconnect covers a dropped connection and a failed server selection
    transient_errors = (ConnectionError, pymongo.errors.AutoReconnect)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._indexed = False

    # -- collections ------------------------------------------------------
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
        super().close()
        self._indexed = False  # a new client (or database) gets its indexes checked again

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
            where = f' (message {i} of the batch)' if len(docs) > 1 else ''
            # nesting and cycles; other values are left to bson.encode (bytes read back as bytes through
            # every view: the Documents' data fields return what was stored)
            problem = shape_problem(data)
            if problem:
                raise InvalidMessage(f'message cannot be stored in MongoDB{where}: {problem[0]}: {problem[1]}')
            try:
                raw.append(RawBSONDocument(bson.encode({
                    '_id': bson.ObjectId(), 'stream': name, 'created': now, 'data': data,
                    'processed': False, 'state': AVAILABLE, 'attempts': 0})))
            except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError, RecursionError) as exc:
                # ValueError: UnicodeEncodeError of a lone surrogate in a str
                raise InvalidMessage(f'message cannot be stored in MongoDB{where}: {type(exc).__name__}: {exc}; '
                                     f'message: {_shown(data)}') from exc
        return raw

    def validated_copies(self, docs: Iterable[Doc]) -> list[Doc]:
        """Validate ``docs`` as :meth:`validate` does; return copies, as they will read back.

        For batching producers: a later change to the caller's dicts cannot
        alter (or poison) a message waiting in a batch.
        """
        return [bson.decode(raw.raw)['data'] for raw in self._encode('-', list(docs), utcnow())]

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
    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None,
                    token: str | None = None) -> RecordId:
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


def _shown(data: object) -> str:
    try:
        return f'{data!r:.200}'
    except RecursionError:  # a repr of a circular or absurdly deep message
        return f'<{type(data).__name__} too deep to show>'


def _after(seconds: float) -> datetime.datetime:
    return utcnow() + datetime.timedelta(seconds=seconds)


def _error_text(error: object) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return f'{type(error).__name__}: {error}'
