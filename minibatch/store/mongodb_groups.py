"""Consumer groups of the MongoDB store: copies pulled into group streams, replay and retention.

The design is that of every store (:mod:`minibatch.store.base_groups`): a
named group ``g`` of stream ``s`` holds copies of the messages of ``s`` in the
group stream ``s[g]``, and its registry entry ``status.groups.g`` of the stream
record says up to which message of ``s`` it has copied (``position``). What is
particular to MongoDB:

* **A copy is made once.** A copy carries ``origin`` (the original's ``_id``),
  and the buffer has a unique index on ``(stream, origin)`` that holds the
  copies only (partial: :data:`COPIES_INDEX`). Copies are inserted with
  ``insert_many(ordered=False)`` and a copy that exists already is refused by
  the server (duplicate key, code 11000) and ignored: two consumers pulling at
  once, or a pull that crashed between inserting its copies and moving the
  position, never make a second copy. The position moves by compare-and-set
  (filtered on the position read), so it never moves back.
* **Ids order only to the second.** An ObjectId is made by its producer, and
  ids of different producers order by their time to the second only; a batch
  appended in a transaction (or published from pending) becomes visible when
  it is committed, after its ids were made. So a message whose id is below a
  group's position can become visible after the position passed it. Every
  pull therefore also *looks back* (at most once per ``group_lookback_every``
  seconds, :data:`LOOKBACK_EVERY` by default, per store object and group):
  the messages of ``s`` with ids within :data:`LOOKBACK` seconds below the
  position that have no copy yet are copied (two reads of ids, and an insert
  only when one is missing). A message is thus never skipped if it becomes
  visible within about ``LOOKBACK - LOOKBACK_EVERY`` seconds of its id's time
  (its producer's clock, so clock skew between hosts counts against it).
* **Retention waits for the look-back.** :func:`retain` removes a message at
  or below a group's position once its copy is ``done`` or ``dead``; one
  without a copy only when it is more than :data:`LOOKBACK` seconds below the
  position (the look-back will not copy it any more: a message before a
  ``'latest'`` start, or whose dead copy was purged). Originals are removed
  before their copies, so a look-back that still finds an original finds its
  copy too and copies nothing twice.
* **A 'latest' start has a floor.** The entry of a group started
  ``'latest'`` on a stream with messages also records ``floor``, the position
  it started at: the look-back never copies what was there before (a replay
  removes the floor).
* **A pending message stops a pull.** A batch written pending (an append
  without transactions, or a commit's output, see
  :mod:`~minibatch.store.mongodb_outbox`) is copied once published, never
  before: a pull copies up to the first pending message. One abandoned for
  longer than the store's ``pending_timeout`` is settled by that pull.

A group stream is an ordinary stream of the same collections: its consumers
claim, commit, release and dead-letter the copies with the ordinary methods.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, OperationFailure

from minibatch.errors import ConfigurationError
from minibatch.store.base_groups import DEFAULT_GROUP, STARTS, check_group, group_stream
from minibatch.store.mongodb_append import PENDING
from minibatch.store.records import AVAILABLE, CLAIMED, DEAD, DONE, RETRY, RecordId, utcnow

#: seconds (of ObjectId time) below a group's position that a pull looks back over for messages that
#: became visible late (see the module's docstring); retention keeps that much below the lowest position
LOOKBACK = 10.0
#: seconds between two look-backs of one group by one store object: bounds their cost under load
LOOKBACK_EVERY = 1.0
#: originals retain() removes per round trip (ids read, then deleted by id)
CHUNK = 5000
#: the buffer's unique sparse index that makes a copy at most once per group
#: the unique index of copies, (group stream, origin); partial: appends of originals do not touch it
COPIES_INDEX = 'mb_copies'
#: indexes of earlier versions, dropped: a sparse (stream, origin) one that held every message (each has a
#: stream), a unique one on a separate origin_key field, one that COPIES_INDEX replaced, a (stream, _id) one
EARLIER_INDEXES = ('mb_origin', 'mb_origin_key', 'mb_origin_copies', 'mb_stream_id')
#: MongoDB's duplicate key error
DUPLICATE_KEY = 11000

#: the copies a group has not committed yet: they are its lag, and they hold their originals
WAITING = [AVAILABLE, CLAIMED, RETRY]
#: the messages of a stream its groups see: not being written (pending), not appended dead
#: (appended dead: state dead with no attempt; a message a consumer gave up on has attempts)
SEEN: dict[str, Any] = {'state': {'$ne': PENDING}, '$or': [{'state': {'$ne': DEAD}}, {'attempts': {'$gt': 0}}]}
#: the fields of an original a copy is made of
_COPIED = {'_id': 1, 'created': 1, 'data': 1, 'state': 1, 'attempts': 1}


def ensure_indexes(buffer: Any) -> None:
    """Create the buffer index groups need (idempotent): the copies, unique by group stream and origin.

    One index, holding copies only, so that an append pays nothing for groups
    (each index costs every append on the MongoDB-wire test server). No (stream,
    _id) index either, though pulls, look-backs, retention and replay read a
    stream's messages in id order whatever their state. (One was blamed for
    stalls of tests/test_eventtime_crash.py; their cause was an index built while
    an append's transaction was open, see eventtime_mongodb.)
    """
    buffer.create_index([('stream', 1), ('origin', 1)], name=COPIES_INDEX, unique=True,
                        partialFilterExpression={'origin': {'$exists': True}})
    for earlier in set(EARLIER_INDEXES) & set(buffer.index_information()):  # one read when there are none
        try:
            buffer.drop_index(earlier)
        except OperationFailure:
            pass  # another process dropped it first


def _key(group: str) -> str:
    return f'status.groups.{group}'


def _raw(collection: Any) -> Any:
    # copies are made of the records as stored: data is never decoded (fast, and an undecodable
    # message is copied as it is and dead-lettered by the group's reads, as on the stream itself)
    return collection.with_options(codec_options=collection.codec_options.with_options(
        document_class=RawBSONDocument))


def registry(streams: Any, name: str) -> dict[str, dict[str, Any]]:
    """The groups of stream ``name`` (``status.groups`` of its record); {} when none. One read."""
    doc = streams.find_one({'name': name}, {'status.groups': 1}) or {}
    groups = (doc.get('status') or {}).get('groups') or {}
    return {group: dict(entry) for group, entry in groups.items()}


def take_turn(streams: Any, name: str, job: str, seconds: float, now: float) -> bool:
    """True (and ``job``'s time set to ``now``) if nobody took ``job`` on ``name`` in the last ``seconds``."""
    key = f'status.turns.{job}'
    return streams.update_one({'name': name, '$or': [{key: {'$exists': False}}, {key: {'$lte': now - seconds}}]},
                              {'$set': {key: now}}).modified_count == 1


#: seconds a MongoDB store trusts what it read of a stream's named groups, when a commit decides whether to
#: keep its messages (one read per stream and this period, not per commit); registering a named group
#: waits this long before it returns, so that no commit misses it afterwards
GROUPS_TTL = 1.0


def has_named(streams: Any, name: str) -> bool:
    """Whether stream ``name`` has a named group registered (one read of its record)."""
    record = streams.find_one({'name': name}, {'status.groups': 1})
    groups = ((record or {}).get('status') or {}).get('groups') or {}
    return any(group != DEFAULT_GROUP for group in groups)


def register(streams: Any, buffer: Any, name: str, group: str, start: str, keep: bool) -> bool:
    """Create the registry entry of ``group`` unless it exists (one conditional write); True if created.

    The stream record must exist. An existing entry only gets ``keep`` True
    when asked for (a group keeps messages once any of its consumers asked).
    """
    check_group(group)
    if start not in STARTS:
        raise ConfigurationError(f'start must be one of {", ".join(repr(s) for s in STARTS)}, got {start!r}')
    position = None
    if group != DEFAULT_GROUP and start == 'latest':
        last = buffer.find_one({'stream': name}, {'_id': 1}, sort=[('_id', -1)])
        position = last['_id'] if last else None
    entry: dict[str, Any] = {'created': utcnow(), 'start': start, 'keep': bool(keep), 'position': position}
    if position is not None:
        entry['floor'] = position  # the look-back never copies what was there before a 'latest' start
    created = streams.update_one({'name': name, _key(group): {'$exists': False}},
                                 {'$set': {_key(group): entry}}).modified_count == 1
    if not created and keep:
        streams.update_one({'name': name, _key(group): {'$exists': True}}, {'$set': {_key(group) + '.keep': True}})
    return created


def _copy(doc: Any, target: str) -> dict[str, Any]:
    """The copy in group stream ``target`` of the raw original ``doc``: available, its created and data."""
    return {'_id': bson.ObjectId(), 'stream': target, 'created': doc.get('created'), 'data': doc.get('data'),
            'processed': False, 'state': AVAILABLE, 'attempts': 0, 'origin': doc['_id']}


def insert_copies(buffer: Any, copies: list[dict[str, Any]]) -> int:
    """Insert ``copies``, ignoring those that exist already (duplicate key); how many were inserted."""
    if not copies:
        return 0
    try:
        return len(buffer.insert_many(copies, ordered=False).inserted_ids)
    except BulkWriteError as exc:
        details = exc.details or {}
        if any(error.get('code') != DUPLICATE_KEY for error in details.get('writeErrors') or []):
            raise
        return int(details.get('nInserted') or 0)


def pull(streams: Any, buffer: Any, name: str, group: str, limit: int, look_back: bool,
         settle: Callable[[], int]) -> tuple[int, bool]:
    """Copy up to ``limit`` new messages of ``name`` into ``group``'s group stream, and maybe look back.

    ``settle`` settles the abandoned pending batches of ``name`` (called when a
    pending message older than the pending timeout stops the pull). Returns
    ``(copied, looked_back)``; (0, False) for the default group or an
    unregistered one.
    """
    if group == DEFAULT_GROUP:
        return 0, False
    entry = registry(streams, name).get(group)
    if entry is None:
        return 0, False
    target = group_stream(name, group)
    position = entry.get('position')
    copied = 0
    looked_back = look_back and position is not None
    if look_back and position is not None:
        copied += _look_back(buffer, name, target, position, entry.get('floor'))
    if limit <= 0:
        return copied, looked_back
    query: dict[str, Any] = {'stream': name}
    if position is not None:
        query['_id'] = {'$gt': position}
    docs = _raw(buffer).find(query, _COPIED).sort('_id', 1).limit(limit)
    copies, new_position, stopped = [], position, None
    for doc in docs:
        if doc.get('state') == PENDING:
            stopped = doc  # a batch being written: copied once published, and the position waits for it
            break
        new_position = doc['_id']
        if doc.get('state') == DEAD and not doc.get('attempts'):
            continue  # appended dead: input not to process; the position moves over it
        copies.append(_copy(doc, target))
    docs.close()
    # copies first, then the position: a crash in between leaves copies the next pull's inserts refuse
    copied += insert_copies(buffer, copies)
    if new_position != position:
        # compare-and-set: of two pullers that read the same position, one moves it; the other's copies
        # were refused or are the same ones. The entry must still exist (delete_group may have run)
        streams.update_one({'name': name, _key(group) + '.created': {'$exists': True},
                            _key(group) + '.position': position},
                           {'$set': {_key(group) + '.position': new_position}})
    if stopped is not None and not copies:
        settle()  # blocked by a pending batch: one abandoned long enough is published or removed
    return copied, looked_back


def _look_back(buffer: Any, name: str, target: str, position: bson.ObjectId, floor: Any = None) -> int:
    """Copy the messages of ``name`` within LOOKBACK below ``position`` (above ``floor``) without a copy in ``target``."""
    window: dict[str, Any] = {'$gte': _bound(position), '$lte': position}
    if floor is not None and floor >= window['$gte']:
        window = {'$gt': floor, '$lte': position}
    originals = {doc['_id'] for doc in buffer.find({'stream': name, '_id': window, **SEEN}, {'_id': 1})}
    if not originals:
        return 0
    copied = {doc['origin'] for doc in buffer.find({'stream': target, 'origin': window}, {'origin': 1, '_id': 0})}
    missing = sorted(originals - copied)
    if not missing:
        return 0
    docs = _raw(buffer).find({'stream': name, '_id': {'$in': missing}, **SEEN}, _COPIED).sort('_id', 1)
    return insert_copies(buffer, [_copy(doc, target) for doc in docs])


def _bound(position: bson.ObjectId) -> bson.ObjectId:
    """The lowest id retention keeps for a group at ``position``: LOOKBACK seconds below it."""
    return bson.ObjectId.from_datetime(position.generation_time - datetime.timedelta(seconds=LOOKBACK))


def retain(streams: Any, buffer: Any, name: str) -> int:
    """Remove the messages of ``name`` every registered group committed, then the copies of them.

    See :meth:`~minibatch.store.base_groups.StoreGroups.retain` and the
    module's docstring. A named group committed a message at or below its
    position when its copy is ``done`` or ``dead``; more than LOOKBACK below
    its position also when it has no copy (a message the group never copies:
    before a ``'latest'`` start, or whose dead copy was purged). A message
    within LOOKBACK below the position without a copy may still be copied by
    a look-back, so it stays. Reads the originals in chunks of CHUNK ids (and
    per chunk the copies of the recent ones); the copies that hold messages
    are few, as a group's consumers pull only when little of its stream waits.
    Returns the number of messages of ``name`` removed.
    """
    groups = registry(streams, name)
    if not groups or any(entry.get('keep') for entry in groups.values()):
        return 0
    # a message still being written, claimed, or a dead letter (kept to be inspected) is never removed
    query: dict[str, Any] = {'stream': name, 'state': DONE if DEFAULT_GROUP in groups
                             else {'$nin': [DEAD, CLAIMED, PENDING]}}
    named = {}  # group stream -> (position, look-back bound, floor)
    for group, entry in groups.items():
        if group != DEFAULT_GROUP:
            if entry.get('position') is None:
                return 0  # a named group that copied nothing yet has committed nothing
            named[group_stream(name, group)] = (entry['position'], _bound(entry['position']), entry.get('floor'))
    upper = min((position for position, _, _ in named.values()), default=None)
    blocking: set[Any] = set()
    for target in named:
        blocking.update(buffer.distinct('origin', {'stream': target, 'state': {'$in': WAITING},
                                                   'origin': {'$lte': upper}}))
    removed, after = 0, None
    while True:
        ids_query: dict[str, Any] = {}
        if upper is not None:
            ids_query['$lte'] = upper
        if after is not None:
            ids_query['$gt'] = after
        if blocking:
            ids_query['$nin'] = sorted(blocking)
        chunk = {**query, '_id': ids_query} if ids_query else query
        ids = [doc['_id'] for doc in buffer.find(chunk, {'_id': 1}).sort('_id', 1).limit(CHUNK)]
        if not ids:
            break
        after, complete = ids[-1], len(ids) < CHUNK
        for target, (_, bound, floor) in named.items():
            recent = [i for i in ids if i >= bound and (floor is None or i > floor)]
            if recent:
                committed = set(buffer.distinct('origin', {'stream': target, 'origin': {'$in': recent},
                                                           'state': {'$in': [DONE, DEAD]}}))
                ids = [i for i in ids if i not in recent or i in committed]
        if ids:
            # the query again: a message replayed or claimed meanwhile stays. Originals before their
            # copies: a look-back that still finds an original then finds its copies too
            removed += buffer.delete_many({**query, '_id': {'$in': ids}}).deleted_count
            if named:
                buffer.delete_many({'stream': {'$in': list(named)}, 'origin': {'$in': ids}, 'state': DONE})
        if complete:
            break
    for target in named:
        _forget_orphan_copies(buffer, name, target)
    return removed


def _forget_orphan_copies(buffer: Any, name: str, target: str) -> int:
    """Remove the done copies in ``target`` older than every message of ``name``: their originals are gone.

    Catches what a retain() killed between its two deletes left, and copies of
    messages the retention limit (``max_age``) or a purge removed. One read, one delete.
    """
    oldest = buffer.find_one({'stream': name}, {'_id': 1}, sort=[('_id', 1)])
    origin: dict[str, Any] = {'$lt': oldest['_id']} if oldest else {'$exists': True}
    return int(buffer.delete_many({'stream': target, 'state': DONE, 'origin': origin}).deleted_count)


def _count_oldest(buffer: Any, query: Mapping[str, Any]) -> tuple[int, datetime.datetime | None]:
    rows = list(buffer.aggregate([{'$match': dict(query)},
                                  {'$group': {'_id': None, 'n': {'$sum': 1}, 'oldest': {'$min': '$created'}}}]))
    if not rows:
        return 0, None
    return int(rows[0].get('n') or 0), rows[0].get('oldest')


def lag(streams: Any, buffer: Any, name: str, group: str) -> tuple[int, datetime.datetime | None]:
    """``(lag, oldest)`` of ``group`` on ``name`` (see ``StoreGroups.group_lag``). Two aggregations at most."""
    if group == DEFAULT_GROUP:
        return _count_oldest(buffer, {'stream': name, 'state': {'$in': WAITING}})
    entry = registry(streams, name).get(group)
    if entry is None:
        return 0, None
    uncopied: dict[str, Any] = {'stream': name, **SEEN}
    if entry.get('position') is not None:
        uncopied['_id'] = {'$gt': entry['position']}
    count, oldest = _count_oldest(buffer, uncopied)
    waiting, oldest_waiting = _count_oldest(buffer, {'stream': group_stream(name, group), 'state': {'$in': WAITING}})
    times = [t for t in (oldest, oldest_waiting) if t is not None]
    return count + waiting, min(times) if times else None


def delete(streams: Any, name: str, group: str, delete_stream: Callable[[str], None]) -> bool:
    """Remove ``group``'s registry entry and (named) its group stream with ``delete_stream``; False if none."""
    removed = streams.update_one({'name': name, _key(group): {'$exists': True}},
                                 {'$unset': {_key(group): ''}}).modified_count == 1
    if removed and group != DEFAULT_GROUP:
        delete_stream(group_stream(name, group))
    return removed


def _since(since: datetime.datetime | RecordId | None) -> dict[str, Any]:
    """The query of the messages from ``since`` on (a naive UTC datetime, an id, or None: all)."""
    if since is None:
        return {}
    if isinstance(since, datetime.datetime):
        if since.tzinfo is not None:
            since = since.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return {'created': {'$gte': since}}
    try:
        return {'_id': {'$gte': bson.ObjectId(since)}}
    except (TypeError, bson.errors.InvalidId) as exc:
        raise ConfigurationError(f'replay since must be a datetime, a message id or None, got {since!r}') from exc


def replay(streams: Any, buffer: Any, name: str, group: str,
           since: datetime.datetime | RecordId | None) -> int:
    """Make ``group`` see the retained messages of ``name`` from ``since`` on again; how many.

    Named group: its copies from the first such message on are removed (first,
    so that no pull refuses a copy as made before the position moves back)
    and its position moves back to just before that message (never forward).
    Default group: those messages in state ``done`` become available.
    """
    groups = registry(streams, name)
    if group != DEFAULT_GROUP and group not in groups:
        known = ', '.join(repr(g) for g in sorted(groups)) or 'none'
        raise ConfigurationError(f'stream {name!r} has no group {group!r} (its groups: {known})')
    retained = {'stream': name, **SEEN, **_since(since)}
    count = int(buffer.count_documents(retained))
    if group == DEFAULT_GROUP:
        buffer.update_many({**retained, 'state': DONE},
                           {'$set': {'state': AVAILABLE, 'processed': False, 'attempts': 0},
                            '$unset': {'error': '', 'done': '', 'failed': '', 'claim': '', 'lease': ''}})
        return count
    if not count:
        return 0
    first = buffer.find_one(retained, {'_id': 1}, sort=[('_id', 1)])['_id']
    buffer.delete_many({'stream': group_stream(name, group), 'origin': {'$gte': first}})
    before = buffer.find_one({'stream': name, '_id': {'$lt': first}}, {'_id': 1}, sort=[('_id', -1)])
    new = before['_id'] if before else None
    field = _key(group) + '.position'
    for _ in range(10):  # a compare-and-set: a pull moving the position meanwhile makes us read it again
        entry = registry(streams, name).get(group)
        if entry is None:
            return 0
        current = entry.get('position')
        if current is None or current < first:
            break  # it has not copied that far yet: nothing to move back
        # and the floor of a 'latest' start goes: the group asked for what is below it
        if streams.update_one({'name': name, field: current},
                              {'$set': {field: new}, '$unset': {_key(group) + '.floor': ''}}).modified_count:
            break
    return count

