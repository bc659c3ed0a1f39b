"""Appending to the MongoDB store: all or nothing, and within the server's size limit.

A list append writes every message or none, also when the producer is killed
half-way or one message is refused by the server:

* **With transactions** (a replica set or a sharded cluster, asked once per
  store with ``hello``): the batch is one ``insert_many`` in a multi-document
  transaction. A producer killed before the commit leaves nothing visible (the
  server aborts the transaction); a refused message aborts it.
* **Without** (a standalone server): the batch is written *pending* (state
  ``pending``, ``processed`` True, and the batch's id in ``batch``), which no
  query of the contract sees, then published by ONE ``update_many``. A batch
  that stays pending for :data:`PENDING_TIMEOUT` seconds was abandoned by a
  crashed producer: :func:`settle_abandoned` (run by ``expire_leases``) deletes
  it, or finishes publishing it if its publication had begun (all of a batch
  is written before it is published, so a begun publication means nothing is
  missing).

A single message needs neither: one ``insert_one`` is atomic.

Every message is encoded and checked before anything is sent: a message whose
record would exceed the server's ``maxBsonObjectSize`` (16 MB; read from
``hello``) less :data:`HEADROOM` raises :class:`~minibatch.errors.InvalidMessage`
naming the limit and the message, and so does a dict the driver would read back
as a ``DBRef``. A write error of the server (a limit we could not know) is
turned into InvalidMessage too; no driver error escapes ``append`` half-written.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure, WriteError

from minibatch.errors import InvalidMessage
from minibatch.store.records import AVAILABLE, Doc, RecordId, shape_problem, utcnow

logger = logging.getLogger('minibatch.store.mongodb')

#: the state of the messages of a batch being written without a transaction: no query of the contract sees it
PENDING = 'pending'
#: MongoDB's document size limit (since 1.8), used until the server has told its own
DEFAULT_MAX_BSON = 16 * 1024 * 1024
#: bytes of a record kept free for the fields its life cycle adds (claim, lease, error, failed, done):
#: a record that fits when appended must still fit when it is claimed, released or dead-lettered
HEADROOM = 32 * 1024
#: longest error text kept on a record, in characters (at most 4 bytes each): well within HEADROOM
MAX_ERROR_CHARS = 4096
#: seconds after which a batch still pending was abandoned by its producer (see settle_abandoned);
#: a batch must be written within this time
PENDING_TIMEOUT = 600.0
#: the server's codes for "transactions are not supported here" (IllegalOperation, NoSuchTransaction
#: on a standalone server answering a transaction number)
NO_TRANSACTIONS_CODES = (20, 251)


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What the store asks the server once (``hello``): its document limit and whether it has transactions."""
    max_bson: int = DEFAULT_MAX_BSON
    transactions: bool = False


def server_facts(db: Any) -> ServerFacts:
    """Ask the server behind ``db`` (one ``hello``) for its :class:`ServerFacts`.

    Transactions need a replica set (wire version 7, MongoDB 4.0) or a sharded
    cluster (wire version 8, 4.2), and sessions; the MongoDB-wire test server
    presents itself as a one-node replica set and has them.
    """
    try:
        hello = db.command('hello')
    except OperationFailure:  # servers before 4.4.2 know only the old name
        hello = db.command('isMaster')
    wire = int(hello.get('maxWireVersion') or 0)
    sessions = hello.get('logicalSessionTimeoutMinutes') is not None
    replica_set = bool(hello.get('setName')) and wire >= 7
    sharded = hello.get('msg') == 'isdbgrid' and wire >= 8
    return ServerFacts(max_bson=int(hello.get('maxBsonObjectSize') or DEFAULT_MAX_BSON),
                       transactions=sessions and (replica_set or sharded))


def encode(name: str, docs: Sequence[Doc], fields: Mapping[str, Any],
           max_bson: int = DEFAULT_MAX_BSON) -> tuple[list[RawBSONDocument], list[RecordId]]:
    """Encode ``docs`` as buffer records of stream ``name`` with ``fields``; the records and their new ids.

    Read-only, no round trip. Raises InvalidMessage, naming the message of the
    batch, for a non-dict, a shape no store accepts (cycles, deep nesting), a
    value BSON cannot hold, a record over ``max_bson`` less HEADROOM, or a dict
    that would read back as a DBRef.
    """
    limit = max_bson - HEADROOM
    now = utcnow()
    raw, ids = [], []
    for i, data in enumerate(docs):
        if not isinstance(data, dict):
            raise InvalidMessage(f'a stream message must be a dict, got {type(data).__name__}: {_shown(data)}')
        where = f'message {i} of the batch' if len(docs) > 1 else 'the message'
        # nesting and cycles; other values are left to bson.encode (bytes read back as bytes through
        # every view: the Documents' data fields return what was stored)
        problem = shape_problem(data)
        if problem:
            raise InvalidMessage(f'{where} cannot be stored in MongoDB: {problem[0]}: {problem[1]}')
        id_ = bson.ObjectId()
        try:
            encoded = bson.encode({'_id': id_, 'stream': name, 'created': now, 'data': data, **fields})
        except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError, RecursionError) as exc:
            # ValueError: UnicodeEncodeError of a lone surrogate in a str
            raise InvalidMessage(f'{where} cannot be stored in MongoDB: {type(exc).__name__}: {exc}; '
                                 f'message: {_shown(data)}') from exc
        if len(encoded) > limit:
            raise InvalidMessage(f'{where} is too large for MongoDB: {len(encoded):,} bytes as a record, over the '
                                 f"limit of {limit:,} bytes (the server's maxBsonObjectSize of {max_bson:,} less "
                                 f'{HEADROOM:,} kept for the fields minibatch adds); nothing was written')
        # The driver reads a dict holding '$ref' and '$id' back as a bson.DBRef, and has no option to
        # stop it. Turning DBRefs back into dicts would cost a walk over every message on every read
        # path, the mongoengine Documents' included (which the store does not own), and would change
        # a real DBRef a program stored; refusing costs a byte search of the encoded record (C speed)
        # and a walk only on a hit. So such a dict is refused, on this store only.
        if b'$ref\x00' in encoded:
            path = _dbref_path(data, 'message')
            if path:
                raise InvalidMessage(f'{where} cannot be stored in MongoDB: {path} has the keys "$ref" and "$id", '
                                     f'which MongoDB reads back as a DBRef; rename them')
        raw.append(RawBSONDocument(encoded))
        ids.append(id_)
    return raw, ids


def _dbref_path(value: Any, path: str) -> str | None:
    """Where in ``value`` a dict with both '$ref' and '$id' is (the driver decodes it as a DBRef), else None."""
    if isinstance(value, dict):
        if '$ref' in value and '$id' in value:
            return path
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(item, (dict, list, tuple)):
            found = _dbref_path(item, f'{path}[{key!r}]')
            if found:
                return found
    return None


def write(buffer: Any, name: str, raw: Sequence[RawBSONDocument], batch: bson.ObjectId | None,
          final: Mapping[str, Any]) -> None:
    """Write the encoded records ``raw`` all or nothing (see the module's docstring).

    ``batch`` None: one record, or a batch in a transaction; otherwise ``raw``
    was encoded pending under ``batch`` and is published with ``final`` (the
    fields of its state). A write the server refuses raises InvalidMessage
    with nothing visible; OperationFailure with a code in NO_TRANSACTIONS_CODES
    tells the caller to write without a transaction. Other driver errors
    (a lost connection) pass unchanged, with nothing visible either.
    """
    try:
        if len(raw) == 1 and batch is None:
            buffer.insert_one(raw[0])
        elif batch is None:
            with buffer.database.client.start_session() as session:
                session.with_transaction(lambda s: buffer.insert_many(raw, ordered=True, session=s))
        else:
            _write_pending(buffer, name, raw, batch, final)
    except (DocumentTooLarge, WriteError, BulkWriteError) as exc:
        raise InvalidMessage(f'MongoDB refused {_refused(exc, len(raw))}; nothing of the batch was written') from exc


def _write_pending(buffer: Any, name: str, raw: Sequence[RawBSONDocument], batch: bson.ObjectId,
                   final: Mapping[str, Any]) -> None:
    try:
        buffer.insert_many(raw, ordered=True)
    except (DocumentTooLarge, WriteError, BulkWriteError):
        # what was written of the batch is invisible: remove it now (else settle_abandoned will)
        buffer.delete_many({'stream': name, 'state': PENDING, 'batch': batch})
        raise
    published = buffer.update_many({'stream': name, 'state': PENDING, 'batch': batch},
                                   {'$set': dict(final)}).modified_count
    if published != len(raw):
        # its writing outlasted the pending timeout, and a consumer settled it as abandoned meanwhile
        logger.error('minibatch: stream %r: a batch of %d messages took longer to write than the pending '
                     'timeout: %d of it were removed as abandoned (write smaller batches)', name, len(raw),
                     len(raw) - published)


def settle_abandoned(buffer: Any, name: str, timeout: float = PENDING_TIMEOUT,
                     committed: Callable[[Any, str | None], bool] | None = None) -> int:
    """Settle the batches of ``name`` pending for over ``timeout`` s: their producers crashed while writing.

    A batch none of whose messages was published is deleted (its append never
    returned), unless ``committed(batch, source)`` says it is the output of a
    commit that took place (see :mod:`~minibatch.store.mongodb_outbox`:
    ``source`` is the input stream recorded on the batch); one whose
    publication had begun is published whole (its append had written
    everything). Atomic per message. Returns the number of messages settled
    (0 when none); one query when there is nothing to settle.
    """
    cutoff = utcnow() - datetime.timedelta(seconds=timeout)
    settled = 0
    for batch in buffer.distinct('batch', {'stream': name, 'state': PENDING, 'created': {'$lt': cutoff}}):
        pending = {'stream': name, 'state': PENDING, 'batch': batch}
        published = buffer.find_one({'stream': name, 'batch': batch, 'state': {'$ne': PENDING}},
                                    {'state': 1, 'processed': 1, 'error': 1, '_id': 0})
        if published is None and committed is not None:
            staged = buffer.find_one(pending, {'source': 1, '_id': 0}) or {}
            if staged.get('source') is not None and committed(batch, staged['source']):
                published = {'state': AVAILABLE, 'processed': False}
        if published is None:
            settled += buffer.delete_many(pending).deleted_count
        else:
            settled += buffer.update_many(pending, {'$set': published}).modified_count
    return settled


def error_text(error: object) -> str | None:
    """``error`` as the text kept on a record, cut to MAX_ERROR_CHARS (the record keeps room for that much)."""
    if error is None:
        return None
    text = error if isinstance(error, str) else f'{type(error).__name__}: {error}'
    cut = ' ... (cut short)'
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - len(cut)] + cut


def _refused(exc: BaseException, count: int) -> str:
    """Which message the server refused, and why, from a write error."""
    if isinstance(exc, DocumentTooLarge):
        return f'a message as too large ({exc})'
    details: Any = getattr(exc, 'details', None) or {}
    error = (details.get('writeErrors') or [details])[0] if isinstance(exc, BulkWriteError) else details
    index = error.get('index')
    where = f'message {index} of the batch' if count > 1 and isinstance(index, int) else 'the message'
    return f'{where}: {error.get("errmsg") or exc}'


def _shown(data: object) -> str:
    try:
        return f'{data!r:.200}'
    except RecursionError:  # a repr of a circular or absurdly deep message
        return f'<{type(data).__name__} too deep to show>'

