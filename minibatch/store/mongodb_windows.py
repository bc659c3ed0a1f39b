"""Window records of the MongoDB store: kept within the size limit, and removed when their consumer died.

A window record holds the window's data (``keep=True``) and the ``token`` of
the claim its messages are held under. Two edges:

* **Too large.** A window of 100 messages of 200 KB is 20 MB, over MongoDB's
  16 MB per document: such a record is written without its data (``data``
  ``[]``, ``data_omitted`` True, ``data_bytes`` the size it would have had), so
  the window still runs and commits; the messages themselves hold the data.
* **A dead consumer.** Its window record stays unprocessed for ever, while the
  messages go back to the stream and make another window:
  :func:`forget_dead_windows` removes the unprocessed records of the claims
  whose leases ``expire_leases`` just ended.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from minibatch.errors import InvalidMessage
from minibatch.store.mongodb_append import DEFAULT_MAX_BSON, HEADROOM
from minibatch.store.records import CLAIMED, RecordId, WindowRecord, utcnow


def save_window(windows: Any, name: str, data: list[Any], query: list[Any] | None, token: str | None,
                max_bson: int = DEFAULT_MAX_BSON, processed: bool = False) -> RecordId:
    """Insert a window record of ``name``, unprocessed unless ``processed`` (one write); its id.

    A record whose data would take it over ``max_bson`` less HEADROOM is
    written without the data (``data_omitted``); data BSON cannot hold raises
    InvalidMessage, writing nothing.
    """
    id_, record = encode_window(name, data, query, token, max_bson, processed)
    windows.insert_one(record)
    return id_


def encode_window(name: str, data: list[Any], query: list[Any] | None, token: str | None,
                  max_bson: int = DEFAULT_MAX_BSON, processed: bool = False,
                  extra: Mapping[str, Any] | None = None) -> tuple[RecordId, RawBSONDocument]:
    """The id and encoded record :func:`save_window` inserts, with the fields ``extra``; no round trip.

    For a commit that must know the record can be written before it writes
    anything else (see :mod:`~minibatch.store.mongodb_outbox`).
    """
    id_ = bson.ObjectId()
    doc = {'_id': id_, 'stream': name, 'created': utcnow(), 'data': data, 'processed': processed,
           'query': query or [],
           'token': token, **(extra or {})}
    try:
        encoded = bson.encode(doc)
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f'window data cannot be stored in MongoDB: {type(exc).__name__}: {exc}') from exc
    if len(encoded) > max_bson - HEADROOM:
        doc.update(data=[], data_omitted=True, data_bytes=len(encoded))
        encoded = bson.encode(doc)
    return id_, RawBSONDocument(encoded)


def window_records(windows: Any, name: str, processed: bool | None = None) -> list[WindowRecord]:
    """The window records of ``name``, oldest first, optionally only the (un)processed ones. Read-only."""
    # not the records of commits with output that had no window (see mongodb_outbox): no window ran
    query: dict[str, Any] = {'stream': name, 'outbox': {'$ne': True}}
    if processed is not None:
        query['processed'] = processed
    return [WindowRecord(id=doc['_id'], stream=doc['stream'], created=doc.get('created'),
                         data=doc.get('data', []), processed=doc.get('processed', False),
                         query=doc.get('query', []))
            for doc in windows.find(query).sort('_id', 1)]


def forget_dead_windows(buffer: Any, windows: Any, name: str, expired: Sequence[str],
                        orphaned_before: datetime.datetime) -> int:
    """Remove the unprocessed window records whose claim holds no claimed message any more.

    Two kinds: those of the claims ``expired`` (the tokens whose leases
    ``expire_leases`` just ended: their messages can no longer be renewed, a
    renewal needs state ``claimed``, so a live consumer's record is never
    removed), and orphans created before ``orphaned_before``: a consumer died
    between a commit's two writes (its messages are done, none will expire),
    or the window failed. A live window holds its messages until its commit's
    first write; only a commit of a window older than the orphan age, caught
    by this between its two writes, can lose its record. Two or three queries
    whatever the number of records. Returns the number of records removed.
    """
    old = windows.distinct('token', {'stream': name, 'processed': False, 'created': {'$lt': orphaned_before},
                                     'token': {'$ne': None}})
    candidates = list({*expired, *old})
    if not candidates:
        return 0
    held = set(buffer.distinct('claim', {'stream': name, 'state': CLAIMED, 'claim': {'$in': candidates}}))
    dead = [token for token in candidates if token not in held]
    if not dead:
        return 0
    return int(windows.delete_many({'stream': name, 'processed': False, 'token': {'$in': dead}}).deleted_count)
