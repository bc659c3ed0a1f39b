"""The MongoDB store's collections, streams and consumer records: the half of it that is not messages.

:class:`MongoCollections` is the base of :class:`~minibatch.store.mongodb.MongoStore`:
on top of connecting (:class:`~minibatch.store.mongodb_connection.MongoConnection`)
it holds the collections and their indexes, what the server told about itself
(``hello``: its document limit, whether it has transactions), and the queries
of the contract on stream and consumer records. The message queries are in
:mod:`minibatch.store.mongodb`.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

import bson
import pymongo
from pymongo.errors import DuplicateKeyError, OperationFailure

from minibatch.errors import InvalidMessage
from minibatch.store import eventtime
from minibatch.store import mongodb_append as appending
from minibatch.store import mongodb_groups as groups
from minibatch.store.mongodb_append import ServerFacts
from minibatch.store.mongodb_connection import MongoConnection, _translate_errors, _unavailable
from minibatch.store.records import StatusPath, StreamInfo, utcnow

logger = logging.getLogger('minibatch.store.mongodb')


class MongoCollections(MongoConnection):
    """A MongoDB store as far as collections, streams and consumer records go (see the module's docstring)."""
    querysets = True
    # AutoReconnect covers a dropped connection and a failed server selection; CursorNotFound is
    # a read whose server restarted under it (its cursors are gone): the same query again works
    transient_errors = (ConnectionError, pymongo.errors.AutoReconnect, pymongo.errors.CursorNotFound)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._indexed = False
        self._facts: ServerFacts | None = None
        #: append batches in a transaction: None asks the server (once), False forces the pending-batch way
        self.use_transactions: bool | None = None
        #: seconds after which a batch still pending was abandoned (see mongodb_append.settle_abandoned)
        self.pending_timeout = appending.PENDING_TIMEOUT
        #: seconds after which an unprocessed window record whose claim holds no message is an orphan
        #: that expire_leases removes (a consumer died between a commit's two writes, or the window failed)
        self.orphan_window_age = 60.0
        #: seconds between two look-backs of a group's pulls (see mongodb_groups): 0 looks back on every pull
        self.group_lookback_every = groups.LOOKBACK_EVERY
        #: seconds a commit trusts what it read of a stream's named groups, and registering a named group
        #: waits before it returns (see mongodb_groups.GROUPS_TTL); the same in every process of a deployment
        self.groups_ttl = groups.GROUPS_TTL
        self._looked_back: dict[tuple[str, str], float] = {}  # (stream, group) -> time.monotonic() of the last

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
            # commits with output still under way (mongodb_outbox): only those records have the field
            db['window'].create_index([('open', 1)], name='mb_window_open', sparse=True)
            groups.ensure_indexes(db['buffer'])
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
        self._facts = None

    def server(self) -> ServerFacts:
        """What the server told (``hello``, asked once per connection): its size limit, whether it has transactions."""
        if self._facts is None:
            self._facts = appending.server_facts(self._db())
        return self._facts

    def _transactions(self) -> bool:
        return self.server().transactions if self.use_transactions is None else self.use_transactions

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
        eventtime.forget_stream(self, name)  # watermark, windows and index of event-time consumers

    @_translate_errors
    def clear(self, name: str) -> int:
        _, buffer, windows = self._collections()
        removed = buffer.delete_many({'stream': name}).deleted_count
        windows.delete_many({'stream': name})
        eventtime.forget_stream(self, name)  # a cleared stream starts with a fresh watermark
        return removed

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
