"""Event-time window state in MongoDB: a field on each indexed message, and two collections.

* ``et`` on a buffer document: ``{s: spec, k: key, t: event time, l: late, ws, we}``
  (``ws``/``we``: the window a late event missed), set with one bulk write per
  index batch, only where no ``et`` is set yet (so indexing is idempotent
  between competing consumers). Indexes serve the search for unindexed messages (``et.s``
  null, in append order: index ``mb_et_unindexed``) and a window's contents, read with
  their state in one query (``mb_et_window``);
* ``eventtime_spec``: per spec the latest event time (``$max``: monotonic with
  competing consumers) and the late count (``$inc``);
* ``eventtime_window``: per (key, window) its state and due time, taken by
  compare-and-set (``update_one`` on the state and due read).

Without transactions, an event can be indexed into a window just as another
consumer takes it; the index step therefore reads its windows again after
writing, and marks late the events whose windows were all taken meanwhile
(the claim of the message settles who gets it, as for every window).

**Catching up after a start.** ``mb_et_unindexed`` is made by the first
event-time consumer of a database, so that producers who never use event time
do not maintain it with every append. The MongoDB-wire test server (SecantusDB
0.7.0b3) builds an index without the documents of a multi-document transaction
open meanwhile (an append of a batch), and they never get an entry: a batch
appended just as a consumer started was invisible to the reads through that
index, never indexed, and its windows never closed. So for
:data:`CATCH_UP` seconds after it starts, a consumer that has caught up reads
the stream's unprocessed messages through ``mb_available`` as well, every
:data:`CATCH_UP_EVERY` seconds, and indexes what the index missed (indexing
writes the document, which gives it its entries). ``mb_et_window`` needs no such
care: a message gets its entry there when it is indexed (an update, not in a
transaction). A real ``mongod`` builds indexes with concurrent transactions
correctly; there the catch-up reads find nothing.
"""
from __future__ import annotations

import datetime
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pymongo import UpdateMany, UpdateOne

from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, RETRY, Message, RecordId, Store, utcnow
from minibatch.store.eventtime import DONE, NOT_YET, NOW, OPEN, TAKEN, Decide, EventTimeState, Indexed, Row

_EPOCH = datetime.datetime(1970, 1, 1)
_IN_STREAM = [AVAILABLE, CLAIMED, RETRY]
#: done() removes passed DONE rows every this many calls (it costs a read of the spec)
PURGE_EVERY = 50
#: seconds an index step holds its batch (claimed: see State._claim_batch)
INDEX_LEASE = 30.0
#: the buffer index of messages not yet indexed for a spec (``et.s`` null), in append order
UNINDEXED_INDEX = 'mb_et_unindexed'
#: seconds after a consumer starts during which it also looks for messages the index missed (module docstring)
CATCH_UP = 60.0
#: ... at most this often, and only once it has read everything the index offers
CATCH_UP_EVERY = 2.0


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        return (value.replace(tzinfo=None) - _EPOCH).total_seconds()
    return None


def _row_id(spec: str, key: str, start: float, end: float) -> str:
    return f'{spec}\x00{key}\x00{start!r}\x00{end!r}'

#: a message not indexed yet, in a write by id: ``et`` is set whole when a message is indexed (or skipped), so
#: this is ``'et.s': None`` (which the unindexed query reads through its index); in a write by id the wire
#: server costs a third less per message with it (1.08 against 1.52 ms for 500 updates of indexed documents)
NOT_INDEXED: dict[str, Any] = {'et': {'$exists': False}}


class State(EventTimeState):
    """:class:`~minibatch.store.eventtime.EventTimeState` on a :class:`~minibatch.store.mongodb.MongoStore`."""

    def __init__(self, store: Store, stream: str, spec: str, describe: str = '', grace: float = 0.0,
                 span: float = 0.0, counting: bool = False, sessions: bool = False) -> None:
        super().__init__(store, stream, spec, describe, grace, span, counting, sessions)
        db = getattr(store, '_db')()
        self.buffer = getattr(store, '_buffer')()
        self.specs, self.windows = db['eventtime_spec'], db['eventtime_window']
        # unindexed messages in append order (et.s null), and a window's events by key and time
        self.buffer.create_index([('stream', 1), ('et.s', 1), ('_id', 1)], name=UNINDEXED_INDEX)
        self._catch_up_until = time.monotonic() + CATCH_UP  # see the module's docstring
        self._next_catch_up = 0.0
        self.buffer.create_index([('et.s', 1), ('et.l', 1), ('et.k', 1), ('et.t', 1)], name='mb_et_window')
        self.windows.create_index([('spec', 1), ('state', 1), ('due', 1)], name='mb_et_due')
        self.windows.create_index([('spec', 1), ('key', 1), ('end', 1)], name='mb_et_key')
        info = store.get_stream(stream)
        born = info.created if info is not None else None
        known = self.specs.find_one({'_id': spec}, {'born': 1})
        if born is not None and known is not None and known.get('born') not in (None, born):
            # the stream was deleted and made again: its old state is not ours
            self.windows.delete_many({'spec': spec})
            self.specs.delete_one({'_id': spec})
        self.specs.update_one({'_id': spec}, {'$setOnInsert': {'stream': stream, 'describe': describe,
                                                               'grace': grace, 'span': span, 'late': 0,
                                                               'born': born}}, upsert=True)
        # messages indexed for another spec of this stream (the window was changed): index them again
        self.buffer.update_many({'stream': stream, 'processed': False, 'et.s': {'$nin': [None, spec]}},
                                {'$unset': {'et': ''}})
        self._done_calls = 0
        self._with_dead: set[tuple[str, float, float]] = set()  # rows whose contents showed dead letters

    # -- indexing ---------------------------------------------------------
    def unindexed(self, limit: int) -> list[Message]:
        where = {'stream': self.stream, 'et.s': None, 'processed': False}
        docs = list(self.buffer.find(where, hint=UNINDEXED_INDEX).sort('_id', 1).limit(limit))
        now = time.monotonic()
        if len(docs) < limit and now < self._catch_up_until and now >= self._next_catch_up:
            # what an index built during an open append transaction missed (see the module's docstring)
            self._next_catch_up = now + CATCH_UP_EVERY
            seen = {d['_id'] for d in docs}
            missed = [d for d in self.buffer.find(where, hint='mb_available').sort('_id', 1).limit(limit)
                      if d['_id'] not in seen]
            docs = sorted(docs + missed, key=lambda d: d['_id'])[:limit]
        # a record whose data is not a dict is not ours to judge: the store's own reads dead-letter it
        return [Message(id=d['_id'], stream=self.stream, created=d.get('created'), data=d['data'],
                        state=AVAILABLE, attempts=d.get('attempts', 0), error=d.get('error'))
                for d in docs if isinstance(d.get('data'), dict)]

    def _mark_skipped(self, skipped: Sequence[RecordId]) -> None:
        if skipped:
            self.buffer.update_many({'_id': {'$in': list(skipped)}, **NOT_INDEXED},
                                    {'$set': {'et': {'s': self.spec, 'x': True}}})

    def _claim_batch(self, events: Sequence[Any]) -> tuple[str, list[Any]]:
        """Claim the batch's messages when ``exclusive``: only those this consumer gets are indexed by it.

        (No transactions here: two consumers indexing one message could disagree on how sessions
        merge, or number it twice.) Otherwise the whole batch, unclaimed (token '').
        """
        if not self.exclusive:
            return '', list(events)
        token = uuid.uuid4().hex
        ours = {m.id for m in self.store.claim(self.stream, [e.id for e in events], token, INDEX_LEASE)}
        return token, [e for e in events if e.id in ours]

    def index(self, events: Sequence[Any], skipped: Sequence[RecordId], decide: Decide) -> Any:
        spec = self.spec
        self._mark_skipped(skipped)
        token, fresh = self._claim_batch(events) if events else ('', [])
        try:
            doc = self.specs.find_one({'_id': spec}, {'max_t': 1}) or {}
            rows = self._rows_near(fresh)
            decision = decide(fresh, doc.get('max_t'), rows)
            if decision.removed_rows:
                self.windows.delete_many({'_id': {'$in': [_row_id(spec, *r) for r in decision.removed_rows]},
                                          'state': OPEN})
            if decision.new_rows:
                self.windows.bulk_write([UpdateOne(
                    {'_id': _row_id(spec, *r)},
                    {'$setOnInsert': {'spec': spec, 'key': r[0], 'start': r[1], 'end': r[2], 'state': OPEN,
                                      'due': r[2]}}, upsert=True) for r in decision.new_rows], ordered=False)
            if decision.on_time:
                self.buffer.bulk_write([UpdateOne(
                    {'_id': e.id, **NOT_INDEXED},
                    {'$set': {'et': {'s': spec, 'k': e.key, 't': e.t, 'l': False, 'ws': e.first}}})
                    for e in decision.on_time], ordered=False)
            late = self._mark_late([(e, w) for e, w in decision.late], only_new=True)
        finally:
            if token:
                self.store.unclaim(self.stream, token, [e.id for e in fresh])
        late += self._recheck(decision.on_time)
        update: dict[str, Any] = {'$inc': {'late': late}}
        if decision.max_t is not None:
            # the watermark rises once the messages are free: a window it closes is not found busy
            update['$max'] = {'max_t': decision.max_t}
        self.specs.update_one({'_id': spec}, update)
        return decision

    def index_counted(self, events: Sequence[Any], skipped: Sequence[RecordId], size: int,
                      assign: Callable[[int, list[Any], dict[str, int]], dict[tuple[str, float, float], int]]) -> int:
        spec = self.spec
        self._mark_skipped(skipped)
        if not events:
            return 0
        # numbered once: only the messages this consumer could claim (a racing one numbers the others)
        token, fresh = self._claim_batch(events)
        if not fresh:
            return 0
        try:
            per_key: dict[str, int] = {}
            for event in fresh:
                per_key[event.key] = per_key.get(event.key, 0) + 1
            fields = {key: 'n.' + hashlib.sha1(key.encode()).hexdigest()[:20] for key in per_key}
            # one atomic $inc reserves each key's numbers for this batch
            before = self.specs.find_one_and_update(
                {'_id': spec}, {'$inc': {fields[k]: n for k, n in per_key.items()}},
                projection={f: 1 for f in fields.values()}, upsert=True) or {}
            reserved = before.get('n') or {}
            next_of = {key: int(reserved.get(field[2:], 0)) for key, field in fields.items()}
            added = assign(size, fresh, next_of)
            self.buffer.bulk_write([UpdateOne({'_id': e.id}, {'$set': {'et': {
                's': spec, 'k': e.key, 't': e.t, 'l': False, 'ws': e.first}}}) for e in fresh], ordered=False)
            self.windows.bulk_write([UpdateOne(
                {'_id': _row_id(spec, *row)},
                {'$setOnInsert': {'spec': spec, 'key': row[0], 'start': row[1], 'end': row[2], 'state': OPEN,
                                  'due': NOT_YET}, '$inc': {'n': n}}, upsert=True)
                for row, n in added.items()], ordered=False)
        finally:
            self.store.unclaim(self.stream, token, [e.id for e in fresh])
        # after giving the messages back: a full row is taken only when all its messages are free
        self.windows.update_many({'spec': spec, 'state': OPEN, 'due': NOT_YET, 'n': {'$gte': size}},
                                 {'$set': {'due': NOW}})
        return len(fresh)

    def _rows_near(self, events: Sequence[Any]) -> dict[tuple[str, float, float], int]:
        if not events:
            return {}
        lo, hi = min(e.t for e in events), max(e.t for e in events) + self.span
        found = self.windows.find({'spec': self.spec, 'key': {'$in': sorted({e.key for e in events})},
                                   'end': {'$gt': lo}, 'start': {'$lt': hi}})
        return {(d['key'], d['start'], d['end']): d['state'] for d in found}

    def _mark_late(self, late: list[tuple[Any, tuple[float, float]]], only_new: bool) -> int:
        if not late:
            return 0
        condition = NOT_INDEXED if only_new else {'et.s': self.spec, 'et.l': False}
        result = self.buffer.bulk_write([UpdateOne(
            {'_id': e.id, **condition},
            {'$set': {'et': {'s': self.spec, 'k': e.key, 't': e.t, 'l': True, 'ws': w[0], 'we': w[1]}}})
            for e, w in late], ordered=False)
        return int(result.modified_count)

    def _recheck(self, on_time: Sequence[Any]) -> int:
        """Mark late the events just indexed whose every window was taken meanwhile (see the module doc)."""
        if not on_time:
            return 0
        rows = self._rows_near(on_time)
        orphans = []
        for event in on_time:
            around = [(r, state) for r, state in rows.items() if r[0] == event.key and r[1] <= event.t < r[2]]
            if not any(state == OPEN for _, state in around):
                window = (around[0][0][1], around[0][0][2]) if around else (event.t, event.t)
                orphans.append((event, window))
        return self._mark_late(orphans, only_new=False)

    def max_time(self) -> float | None:
        doc = self.specs.find_one({'_id': self.spec}, {'max_t': 1}) or {}
        value: float | None = doc.get('max_t')
        return value

    # -- closing ----------------------------------------------------------
    def ready(self, until: float, now: float, limit: int) -> list[Row]:
        found = []
        for state, due in ((OPEN, until), (TAKEN, now)):
            cursor = self.windows.find({'spec': self.spec, 'state': state, 'due': {'$lte': due}}).sort('due', 1)
            found += [_row(d) for d in cursor.limit(limit)]
        return sorted(found, key=lambda r: r.due)[:limit]

    def take(self, row: Row, due: float) -> bool:
        result = self.windows.update_one({'_id': _row_id(self.spec, row.key, row.start, row.end),
                                          'state': row.state, 'due': row.due},
                                         {'$set': {'state': TAKEN, 'due': due}})
        return bool(result.modified_count == 1)

    def _window_query(self, row: Row, late: bool = False) -> dict[str, Any]:
        return {'et.s': self.spec, 'et.l': late, 'et.k': row.key, 'et.t': {'$gte': row.start, '$lt': row.end}}

    def contents(self, row: Row) -> list[Indexed]:
        cursor = self.buffer.find({**self._window_query(row), 'et.ws': {'$lte': row.start},
                                   'state': {'$in': _IN_STREAM + [DEAD]}}, {'_id': 1, 'et': 1, 'state': 1, 'lease': 1})
        found = [Indexed(d['_id'], row.key, d['et']['t'], d['state'], _epoch(d.get('lease')), first=d['et']['ws'])
                 for d in cursor]
        if any(item.state == DEAD for item in found):
            self._with_dead.add(row.key_window)  # done() takes them out of the index
            found = [item for item in found if item.state != DEAD]
        return sorted(found, key=lambda i: (i.t, i.id))

    def reschedule(self, row: Row, due: float) -> None:
        self.windows.update_one({'_id': _row_id(self.spec, row.key, row.start, row.end), 'state': TAKEN},
                                {'$set': {'due': due}})

    def reopen(self, rows: Iterable[Row]) -> None:
        ids = [_row_id(self.spec, r.key, r.start, r.end) for r in rows]
        if ids:
            now = (utcnow() - _EPOCH).total_seconds()
            self.windows.update_many({'_id': {'$in': ids}, 'state': TAKEN}, {'$set': {'due': now}})

    def done(self, row: Row, ids: Sequence[RecordId], sweep: bool = False) -> None:
        if self.counting:  # nothing is late for count windows: a done row is not needed any more
            self.windows.delete_one({'_id': _row_id(self.spec, row.key, row.start, row.end)})
        else:
            self.windows.update_one({'_id': _row_id(self.spec, row.key, row.start, row.end)},
                                    {'$set': {'state': DONE, 'due': row.end}})
        if sweep or row.key_window in self._with_dead:
            # dead letters leave the index: requeued, they are indexed again (as late events)
            self._with_dead.discard(row.key_window)
            self.buffer.update_many({**self._window_query(row), 'state': DEAD}, {'$unset': {'et': ''}})
        self._done_calls += 1
        if self._done_calls % PURGE_EVERY == 1:
            doc = self.specs.find_one({'_id': self.spec}, {'max_t': 1}) or {}
            if doc.get('max_t') is not None:
                self.windows.delete_many({'spec': self.spec, 'state': DONE,
                                          'due': {'$lte': doc['max_t'] - self.grace - self.span}})

    def rows(self, key: str, lo: float, hi: float) -> dict[tuple[float, float], int]:
        found = self.windows.find({'spec': self.spec, 'key': key, 'end': {'$gt': lo}, 'start': {'$lt': hi}})
        return {(d['start'], d['end']): d['state'] for d in found}

    # -- late events ------------------------------------------------------
    def late(self, limit: int) -> list[Indexed]:
        cursor = self.buffer.find({'stream': self.stream, 'et.s': self.spec, 'et.l': True, 'processed': False},
                                  {'_id': 1, 'et': 1, 'state': 1}).sort('_id', 1).limit(limit)
        return [Indexed(d['_id'], d['et']['k'], d['et']['t'], d['state'],
                        window=(d['et'].get('ws', d['et']['t']), d['et'].get('we', d['et']['t']))) for d in cursor]

    def forget(self, ids: Sequence[RecordId]) -> None:
        if ids:
            self.buffer.bulk_write([UpdateMany({'_id': {'$in': list(ids)}}, {'$unset': {'et': ''}})])

    def next_due(self, clock_lag: float | None) -> float | None:
        dues = []
        for state, lag in ((OPEN, clock_lag), (TAKEN, 0.0)):
            if lag is None:
                continue
            doc = self.windows.find_one({'spec': self.spec, 'state': state}, {'due': 1}, sort=[('due', 1)])
            if doc is not None:
                dues.append(doc['due'] + lag)
        return min(dues) if dues else None


def _row(doc: Any) -> Row:
    return Row(doc['key'], doc['start'], doc['end'], doc['state'], doc['due'])


def figures(store: Store, stream: str) -> dict[str, Any]:
    """``watermark`` (epoch seconds or None), ``open_windows``, ``late`` over the specs of ``stream``."""
    db = getattr(store, '_db')()
    specs = list(db['eventtime_spec'].find({'stream': stream}))
    marks = [d['max_t'] - d.get('grace', 0.0) for d in specs if d.get('max_t') is not None]
    open_windows = db['eventtime_window'].count_documents(
        {'spec': {'$in': [d['_id'] for d in specs]}, 'state': {'$ne': DONE}}) if specs else 0
    return {'watermark': max(marks) if marks else None, 'open_windows': open_windows,
            'late': sum(int(d.get('late') or 0) for d in specs)}


def forget_stream(store: Store, stream: str) -> None:
    """Remove every spec of ``stream`` with its window rows (its messages go with the stream)."""
    db = getattr(store, '_db')()
    specs = [d['_id'] for d in db['eventtime_spec'].find({'stream': stream}, {'_id': 1})]
    if specs:
        db['eventtime_window'].delete_many({'spec': {'$in': specs}})
        db['eventtime_spec'].delete_many({'_id': {'$in': specs}})
