"""Reading messages of the MongoDB store, and dead-lettering those that cannot be read.

A record can be unreadable: written by another program (``data`` that is not a
dict, or none), or nested so deeply that the driver cannot decode it
(``InvalidBSON``) or the server cannot update it. Such a message must not
block the stream: :func:`read` returns it apart, and the store dead-letters it
with :func:`bury` (its reason in ``error``) while the others flow, as the
SQLite store does.

The hot path pays nothing for this: a query's documents are decoded by the
driver as usual, and only when that fails is the query run again with the
records undecoded (``RawBSONDocument``), to decode them one by one and find
the culprits.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import DocumentTooLarge, OperationFailure

from minibatch.store.mongodb_append import error_text
from minibatch.store.mongodb_connection import AUTHENTICATION_FAILED
from minibatch.store.records import AVAILABLE, DEAD, DONE, Message, RecordId, utcnow

logger = logging.getLogger('minibatch.store.mongodb')

#: what decoding a record can raise: InvalidBSON (bad UTF-8, too deep for the decoder), RecursionError
DECODE_ERRORS = (bson.errors.InvalidBSON, RecursionError, MemoryError, ValueError)


@dataclasses.dataclass
class Unreadable:
    """A record whose data cannot be turned into a message, and why."""
    id: RecordId
    why: str
    created: datetime.datetime | None = None
    state: str = AVAILABLE
    attempts: int = 0

    def message(self, name: str) -> Message:
        """As a message for inspection: empty data, the reason as its error."""
        return Message(id=self.id, stream=name, created=self.created or utcnow(), data={}, state=self.state,
                       attempts=self.attempts, error=self.why)


def message_of(doc: Mapping[str, Any]) -> Message:
    """The Message of a decoded buffer record."""
    return Message(id=doc['_id'], stream=doc['stream'], created=doc.get('created'), data=doc['data'],  # type: ignore[arg-type]
                   state=doc.get('state', AVAILABLE if not doc.get('processed') else DONE),
                   attempts=doc.get('attempts', 0), error=doc.get('error'))


def read(collection: Any, query: Mapping[str, Any], limit: int | None = None,
         hint: Any = None) -> tuple[list[Message], list[Unreadable]]:
    """The messages ``query`` finds in the buffer ``collection``, by id, at most ``limit``; and the unreadable.

    Read-only. An unreadable record is left out of the messages and returned
    as an :class:`Unreadable`, for the caller to dead-letter or show.
    """
    def cursor(coll: Any) -> Any:
        found = coll.find(query, hint=hint).sort('_id', 1)
        return found.limit(limit) if limit else found
    try:
        docs: Iterable[Any] = list(cursor(collection))
    except DECODE_ERRORS:
        docs = _decoded_one_by_one(cursor, collection)
    messages, bad = [], []
    for doc in docs:
        if isinstance(doc, Unreadable):
            bad.append(doc)
        elif type(doc.get('data')) is dict:
            messages.append(message_of(doc))
        else:
            bad.append(_unreadable(doc, f'its data is {type(doc.get("data")).__name__}, not a dict'))
    return messages, bad


def _decoded_one_by_one(cursor: Callable[[Any], Any], collection: Any) -> list[Any]:
    # the records undecoded, then decoded one by one: a RawBSONDocument decodes its top-level
    # fields alone when one is read, leaving 'data' undecoded, so the culprit's id can be read
    options = collection.codec_options
    raw_collection = collection.with_options(codec_options=options.with_options(document_class=RawBSONDocument))
    docs: list[Any] = []
    for raw in cursor(raw_collection):
        try:
            docs.append(bson.decode(raw.raw, options))
        except DECODE_ERRORS as exc:
            docs.append(_unreadable(raw, f'it cannot be decoded: {type(exc).__name__}: {exc}'))
    return docs


def _unreadable(doc: Mapping[str, Any], why: str) -> Unreadable:
    return Unreadable(id=doc['_id'], why=f'unreadable message: {why}', created=doc.get('created'),
                      state=doc.get('state', AVAILABLE), attempts=doc.get('attempts', 0))


def bury(buffer: Any, name: str, bad: Sequence[Unreadable], state: str, token: str | None = None) -> int:
    """Dead-letter the unreadable messages ``bad`` of ``name`` that are still in ``state`` (under ``token``).

    The record is replaced (atomically, only if still in that state) by a dead
    letter with empty ``data``, the reason in ``error``, and the record as it
    was, as BSON bytes, in ``original`` (left out if that makes it too large):
    nothing is lost, and a replacement needs no update of data the server may
    be unable to parse. A round trip or two per message: only for unreadable
    ones. Returns how many were dead-lettered.
    """
    raw_collection = buffer.with_options(
        codec_options=buffer.codec_options.with_options(document_class=RawBSONDocument))
    buried = 0
    for item in bad:
        logger.error('minibatch: stream %r: message %s dead-lettered: %s', name, item.id, item.why)
        query: dict[str, Any] = {'_id': item.id, 'stream': name, 'state': state}
        if token is not None:
            query['claim'] = token
        original = raw_collection.find_one(query)
        if original is None:
            continue  # no longer in that state: another consumer dealt with it
        now = utcnow()
        record = {'_id': item.id, 'stream': name, 'created': item.created or now, 'data': {}, 'processed': True,
                  'state': DEAD, 'attempts': item.attempts, 'error': error_text(item.why), 'failed': now,
                  'original': bson.Binary(original.raw)}
        try:
            buried += buffer.replace_one(query, record).modified_count
        except (DocumentTooLarge, OperationFailure):
            del record['original']  # the record and its copy exceed the size limit: keep the reason only
            buried += buffer.replace_one(query, record).modified_count
    return buried


def claim_each(buffer: Any, name: str, ids: Sequence[RecordId], update: Mapping[str, Any]) -> int:
    """Claim the available messages ``ids`` of ``name`` one by one with ``update``, after a batch claim failed.

    The error path of ``claim``: a message the server cannot update (one
    nested too deeply for it, say) is dead-lettered with the server's error,
    and the others are claimed. The failed batch may have claimed some already;
    those are the caller's as well (it reads back by token). Returns an upper
    bound of the number claimed (the caller reads back what it holds).
    """
    refused = []
    for id_ in ids:
        try:
            buffer.update_one({'_id': id_, 'stream': name, 'state': AVAILABLE}, update)
        except OperationFailure as exc:
            if exc.code == AUTHENTICATION_FAILED:
                raise
            refused.append(Unreadable(id_, f'unreadable message: the server cannot claim it: {exc}'))
    if refused:
        bury(buffer, name, refused, AVAILABLE)
    return len(ids) - len(refused)
