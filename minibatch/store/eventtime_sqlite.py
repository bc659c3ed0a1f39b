"""Event-time window state in the embedded store: tables beside the buffer, in the same file.

``et_specs`` (one row per spec: its number ``sid``, latest event time, late
count, and the id up to which the buffer was indexed), ``et_entries`` (per
indexed message: key, event time, late flag), ``et_marks`` (which messages a
spec indexed) and ``et_windows`` (per (key, window): state and due time).
Window contents are found by joining ``et_entries`` to ``buffer``; each index
step and each state change is one ``BEGIN IMMEDIATE`` transaction, so competing
consumers see one order of events (SQLite serialises writers).

The entries are kept in window order (spec, late, key, time, id): a window's
events are one range, read and deleted together, where keys interleave in the
stream. Looking up whether a message was indexed goes through ``et_marks``, kept
in id order, eight bytes a message (files of earlier versions held both in one
table, ``et_events``, keyed by id and indexed by window: it is moved over once).

Buffer ids only increase, in commit order, so new messages are those above the
spec's ``cursor``; a full anti-join (every ``RESCAN`` seconds) also finds
messages that came back below it (a dead letter requeued, say).
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from minibatch.store import sqlite_messages as lifecycle
from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, RETRY, Message, RecordId, Store
from minibatch.store.eventtime import (DONE, NOT_YET, NOW, OPEN, TAKEN, Closing, Commit, Decide, EventTimeState,
                                      Indexed, PlainRead, Row, busy_until)
from minibatch.store.sqlite_messages import chunks, marks
from minibatch.store.sqlite_values import (AVAILABLE_COLUMNS, MESSAGE_COLUMNS, available_messages_of, decode_column,
                                           dumps, messages_of, to_datetime)

#: seconds between full scans for unindexed messages below the cursor
RESCAN = 30.0
#: the marks of committed messages are deleted in batches of this many (or after FORGET_EVERY seconds): a
#: window's messages lie on as many pages of et_marks as it has events (keys interleave), one write for many
#: windows touches each page once. (Their entries go in the commit: a window's entries are one range.)
FORGET_BATCH = 5000
FORGET_EVERY = 2.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS et_specs (
    spec TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    describe TEXT NOT NULL DEFAULT '',
    grace REAL NOT NULL DEFAULT 0,
    span REAL NOT NULL DEFAULT 0,
    max_t REAL,
    cursor INTEGER NOT NULL DEFAULT 0,
    late INTEGER NOT NULL DEFAULT 0,
    born REAL,  -- the stream's creation time: a stream deleted and made again starts afresh
    sid INTEGER  -- the spec's number in et_entries and et_marks (a byte or two, where the spec takes 21)
);
CREATE INDEX IF NOT EXISTS et_specs_stream ON et_specs (stream);
CREATE TABLE IF NOT EXISTS et_entries (
    sid INTEGER NOT NULL,
    late INTEGER NOT NULL,
    key TEXT NOT NULL,
    t REAL NOT NULL,
    msg INTEGER NOT NULL,
    ws REAL,  -- late: the window missed, on time: the start of the first window it is in
    we REAL,
    PRIMARY KEY (sid, late, key, t, msg)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS et_marks (
    msg INTEGER NOT NULL,
    sid INTEGER NOT NULL,
    PRIMARY KEY (msg, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS et_windows (
    spec TEXT NOT NULL,
    key TEXT NOT NULL,
    wstart REAL NOT NULL,
    wend REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    n INTEGER NOT NULL DEFAULT 0,  -- count windows: events recorded in the row
    PRIMARY KEY (spec, key, wstart, wend)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS et_windows_due ON et_windows (spec, state, due);
-- count windows per key: the number the key's next message gets
CREATE TABLE IF NOT EXISTS et_keys (
    spec TEXT NOT NULL,
    key TEXT NOT NULL,
    next INTEGER NOT NULL,
    PRIMARY KEY (spec, key)
) WITHOUT ROWID;
"""
_ROW = 'spec = ? AND key = ? AND wstart = ? AND wend = ?'
#: the on-time entries of a row: (sid, key, start, end)
_RANGE = 'sid = ? AND late = 0 AND key = ? AND t >= ? AND t < ?'
#: MESSAGE_COLUMNS but the id, of the buffer row ``b`` (the id is the event's ``e.msg``)
_MESSAGE = ''.join(f', b.{column}' for column in MESSAGE_COLUMNS.split(', ')[1:])
_IN_STREAM = f"('{AVAILABLE}', '{CLAIMED}', '{RETRY}')"


def _schema(conn: sqlite3.Connection) -> None:
    """Make the tables; in a file of an earlier version, number its specs and move ``et_events`` over."""
    for statement in SCHEMA.split(';'):
        if statement.strip():
            conn.execute(statement)
    if 'sid' not in {row[1] for row in conn.execute('PRAGMA table_info(et_specs)')}:
        conn.execute('ALTER TABLE et_specs ADD COLUMN sid INTEGER')
    for (spec,) in conn.execute('SELECT spec FROM et_specs WHERE sid IS NULL').fetchall():
        conn.execute(f'UPDATE et_specs SET sid = {_NEXT_SID} WHERE spec = ?', (spec,))
    conn.execute('CREATE UNIQUE INDEX IF NOT EXISTS et_specs_sid ON et_specs (sid)')
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'et_events'").fetchone():
        conn.execute('INSERT OR IGNORE INTO et_entries (sid, late, key, t, msg, ws, we) SELECT s.sid, e.late, e.key,'
                     ' e.t, e.msg, e.ws, e.we FROM et_events e JOIN et_specs s ON s.spec = e.spec')
        conn.execute('INSERT OR IGNORE INTO et_marks (msg, sid) SELECT e.msg, s.sid FROM et_events e'
                     ' JOIN et_specs s ON s.spec = e.spec')
        conn.execute('DROP TABLE et_events')


#: the number a new spec gets
_NEXT_SID = '(SELECT coalesce(max(sid), 0) + 1 FROM et_specs)'


class State(EventTimeState):
    """:class:`~minibatch.store.eventtime.EventTimeState` on a :class:`~minibatch.store.sqlite.SQLiteStore`."""

    def __init__(self, store: Store, stream: str, spec: str, describe: str = '', grace: float = 0.0,
                 span: float = 0.0, counting: bool = False, sessions: bool = False) -> None:
        super().__init__(store, stream, spec, describe, grace, span, counting, sessions)
        self.db: Any = getattr(store, 'db')
        self._next_rescan = 0.0
        self._forgotten: list[RecordId] = []
        self._next_forget = time.monotonic() + FORGET_EVERY

        def create(conn: sqlite3.Connection) -> int:
            _schema(conn)
            born = conn.execute('SELECT created FROM streams WHERE name = ?', (stream,)).fetchone()
            known = conn.execute('SELECT born FROM et_specs WHERE spec = ?', (spec,)).fetchone()
            if born and known and known[0] is not None and known[0] != born[0]:
                _forget_specs(conn, [spec])  # the stream was deleted and made again: its old state is not ours
            conn.execute('INSERT OR IGNORE INTO et_specs (spec, stream, describe, grace, span, born, sid)'
                         f' VALUES (?, ?, ?, ?, ?, ?, {_NEXT_SID})', (spec, stream, describe, grace, span,
                                                                  born and born[0]))
            (sid,), = conn.execute('SELECT sid FROM et_specs WHERE spec = ?', (spec,)).fetchall()
            # entries and marks a consumer that stopped or died had not deleted yet (see FORGET_BATCH)
            for table in ('et_entries', 'et_marks'):
                conn.execute(f'DELETE FROM {table} WHERE sid = ? AND NOT EXISTS (SELECT 1 FROM buffer b WHERE'
                             f' b.id = {table}.msg AND b.state IN {_IN_STREAM})', (sid,))
            return int(sid)
        #: the spec's number in et_entries and et_marks
        self.sid: int = self.db.write(create)

    # -- indexing ---------------------------------------------------------
    def unindexed(self, limit: int) -> list[Message]:
        messages, bad = available_messages_of(self.stream, self._unindexed_rows(limit))
        if bad:
            getattr(self.store, '_bury')(self.stream, bad, AVAILABLE)
        return messages

    def unindexed_fields(self, limit: int, read: PlainRead) -> list[Message | tuple[RecordId, str, float]]:
        """As the contract says, with no Message made for a message ``read`` reads (one decoder call for all)."""
        rows = self._unindexed_rows(limit)
        items: list[Any] = []
        slow, bad = [], []
        for row, (doc, why) in zip(rows, decode_column(rows, 2)):
            if why is not None:
                bad.append((row[0], why))
                continue
            fields = read(doc)
            if fields is None:
                slow.append(len(items))
                items.append((row, doc))
            else:
                items.append((row[0], *fields))
        for at in slow:  # the caller's readers say what is wrong with these, or read them otherwise
            (id_, created, _, attempts, error), doc = items[at]
            items[at] = Message(id_, self.stream, to_datetime(created), doc, AVAILABLE, attempts, error)
        if bad:
            getattr(self.store, '_bury')(self.stream, bad, AVAILABLE)
        return items

    def _unindexed_rows(self, limit: int) -> list[Any]:
        """Rows of AVAILABLE_COLUMNS of the messages not indexed yet, oldest first."""
        now = time.monotonic()
        if now >= self._next_rescan:
            self._next_rescan = now + RESCAN
            sql = (f'SELECT {AVAILABLE_COLUMNS} FROM buffer b WHERE stream = ? AND state = ? AND NOT EXISTS '
                   '(SELECT 1 FROM et_marks m WHERE m.msg = b.id AND m.sid = ?)'
                   f' AND id NOT IN ({lifecycle.CLAIMED_IDS}) ORDER BY id LIMIT ?')
            spec: Any = self.sid
        else:
            sql = (f'SELECT {AVAILABLE_COLUMNS} FROM buffer WHERE stream = ? AND state = ? AND id > '
                   f'(SELECT cursor FROM et_specs WHERE spec = ?) AND id NOT IN ({lifecycle.CLAIMED_IDS})'
                   ' ORDER BY id LIMIT ?')
            spec = self.spec
        rows: list[Any] = self.db.read(sql, (self.stream, AVAILABLE, spec, self.stream, limit))
        return rows

    def _fresh(self, conn: sqlite3.Connection, events: Sequence[Any]) -> list[Any]:
        """The events not indexed yet (another consumer may have indexed the same batch).

        Every indexed id is at or below the spec's cursor (each index step moves the cursor
        past what it indexed, in its transaction): only those below need a look-up.
        """
        (cursor,), = conn.execute('SELECT cursor FROM et_specs WHERE spec = ?', (self.spec,)).fetchall()
        known: set[int] = set()
        for chunk in chunks([e.id for e in events if e.id <= cursor]):
            known.update(row[0] for row in conn.execute(
                f'SELECT msg FROM et_marks WHERE msg IN ({marks(chunk)}) AND sid = ?', (*chunk, self.sid)))
        return [e for e in events if e.id not in known]

    def index_counted(self, events: Sequence[Any], skipped: Sequence[RecordId], size: int,
                      assign: Callable[[int, list[Any], dict[str, int]], dict[tuple[str, float, float], int]]) -> int:
        upto = max([int(e.id) for e in events] + [int(i) for i in skipped] + [0])

        def work(conn: sqlite3.Connection) -> int:
            fresh = self._fresh(conn, events)
            keys = sorted({e.key for e in fresh})
            next_of: dict[str, int] = {}
            for start in range(0, len(keys), 400):
                part = keys[start:start + 400]
                next_of.update(conn.execute(f'SELECT key, next FROM et_keys WHERE spec = ? AND key IN ({marks(part)})',
                                            (self.spec, *part)).fetchall())
            added = assign(size, fresh, next_of)
            conn.executemany('INSERT INTO et_keys (spec, key, next) VALUES (?, ?, ?) ON CONFLICT (spec, key)'
                             ' DO UPDATE SET next = excluded.next', [(self.spec, k, next_of[k]) for k in keys])
            self._record(conn, [(e, 0, e.first, None) for e in fresh])
            conn.executemany(f'INSERT INTO et_windows (spec, key, wstart, wend, state, due, n) VALUES'
                             f' (?, ?, ?, ?, {OPEN}, ?, ?) ON CONFLICT (spec, key, wstart, wend)'
                             ' DO UPDATE SET n = n + excluded.n',
                             [(self.spec, *row, NOT_YET, n) for row, n in added.items()])
            conn.execute(f'UPDATE et_windows SET due = ? WHERE spec = ? AND state = {OPEN} AND due = ? AND n >= ?',
                         (NOW, self.spec, NOT_YET, size))
            conn.execute('UPDATE et_specs SET cursor = max(cursor, ?) WHERE spec = ?', (upto, self.spec))
            return len(fresh)
        return int(self.db.write(work))

    def index(self, events: Sequence[Any], skipped: Sequence[RecordId], decide: Decide) -> Any:
        upto = max([int(e.id) for e in events] + [int(i) for i in skipped] + [0])

        def work(conn: sqlite3.Connection) -> Any:
            fresh = self._fresh(conn, events)
            max_t = conn.execute('SELECT max_t FROM et_specs WHERE spec = ?', (self.spec,)).fetchone()[0]
            rows: dict[tuple[str, float, float], int] = {}
            if fresh:
                lo, hi = min(e.t for e in fresh), max(e.t for e in fresh) + self.span
                keys = sorted({e.key for e in fresh})
                for start in range(0, len(keys), 400):
                    part = keys[start:start + 400]
                    for key, ws, we, state in conn.execute(
                            f'SELECT key, wstart, wend, state FROM et_windows WHERE spec = ? AND key IN '
                            f'({marks(part)}) AND wend > ? AND wstart < ?', (self.spec, *part, lo, hi)):
                        rows[(key, ws, we)] = state
            decision = decide(fresh, max_t, rows)
            conn.executemany(f'DELETE FROM et_windows WHERE {_ROW} AND state = {OPEN}',
                             [(self.spec, *row) for row in decision.removed_rows])
            conn.executemany(f'INSERT OR IGNORE INTO et_windows (spec, key, wstart, wend, state, due)'
                             f' VALUES (?, ?, ?, ?, {OPEN}, ?)',
                             [(self.spec, *row, row[2]) for row in decision.new_rows])
            self._record(conn, [(e, 0, e.first, None) for e in decision.on_time]
                         + [(e, 1, w[0], w[1]) for e, w in decision.late])
            conn.execute('UPDATE et_specs SET max_t = ?, cursor = max(cursor, ?), late = late + ? WHERE spec = ?',
                         (decision.max_t, upto, len(decision.late), self.spec))
            return decision
        return self.db.write(work)

    def _record(self, conn: sqlite3.Connection, events: list[tuple[Any, int, float | None, float | None]]) -> None:
        """Write the entries and marks of ``(event, late, ws, we)``: events not indexed yet (see _fresh)."""
        sid = self.sid
        conn.executemany('INSERT OR IGNORE INTO et_marks (msg, sid) VALUES (?, ?)', [(e.id, sid) for e, *_ in events])
        conn.executemany('INSERT OR IGNORE INTO et_entries (sid, late, key, t, msg, ws, we)'
                         ' VALUES (?, ?, ?, ?, ?, ?, ?)',
                         [(sid, late, e.key, e.t, e.id, ws, we) for e, late, ws, we in events])

    def max_time(self) -> float | None:
        rows = self.db.read('SELECT max_t FROM et_specs WHERE spec = ?', (self.spec,))
        return rows[0][0] if rows else None

    # -- closing ----------------------------------------------------------
    def ready(self, until: float, now: float, limit: int) -> list[Row]:
        sql = ('SELECT key, wstart, wend, state, due FROM et_windows WHERE spec = ? AND state = ? AND due <= ?')
        rows = self.db.read(f'SELECT * FROM ({sql} UNION ALL {sql}) ORDER BY due LIMIT ?',
                            (self.spec, OPEN, until, self.spec, TAKEN, now, limit))
        return [Row(*row) for row in rows]

    def take(self, row: Row, due: float) -> bool:
        return bool(self.db.write(lambda conn: self._take(conn, row, due)))

    def _take(self, conn: sqlite3.Connection, row: Row, due: float) -> bool:
        return bool(conn.execute(
            f'UPDATE et_windows SET state = {TAKEN}, due = ? WHERE {_ROW} AND state = ? AND due = ?',
            (due, self.spec, row.key, row.start, row.end, row.state, row.due)).rowcount == 1)

    # a claimed message is available in its row and held by a claim (see sqlite_messages): state and lease from it
    # (closing also reads the messages themselves: {message}, the columns of MESSAGE_COLUMNS after the id). The
    # claimed ids are looked up with IN, which SQLite answers from an index it builds once per query: joined, they
    # were scanned once per event, and another consumer's waiting windows hold thousands of them.
    _CONTENTS = ("WITH cl(id) AS ({claimed}) SELECT e.msg, e.key, e.t,"
                 f" CASE WHEN e.msg IN cl THEN '{CLAIMED}' ELSE b.state END,"
                 ' CASE WHEN e.msg IN cl THEN (SELECT max(c.lease) FROM claims AS c, json_each(c.ids) AS j'
                 ' WHERE c.stream = b.stream AND j.value = e.msg) ELSE b.lease END,'
                 ' e.ws{message} FROM et_entries e JOIN buffer b ON b.id = e.msg'
                 ' WHERE e.sid = ? AND e.late = 0 AND e.key = ? AND e.t >= ? AND e.t < ? AND e.ws <= ?'
                 f' AND b.state IN {_IN_STREAM} ORDER BY e.t, e.msg')

    def _contents(self, read: Callable[[str, Sequence[Any]], Iterable[Any]], row: Row, disjoint: Sequence[str] = (),
                  message: str = '') -> list[Any]:
        """The rows of the contents query: :class:`Indexed` fields, then ``message`` columns when given."""
        claimed, params = lifecycle.claimed_ids_but(disjoint)
        return list(read(self._CONTENTS.format(claimed=claimed, message=message),
                         (self.stream, *params, self.sid, row.key, row.start, row.end, row.start)))

    def contents(self, row: Row) -> list[Indexed]:
        return [Indexed(r[0], r[1], r[2], r[3], r[4], first=r[5]) for r in self._contents(self.db.read, row)]

    def close(self, row: Row, now: float, lease: float, token: str, disjoint: Sequence[str] = ()) -> Closing:
        """Take, read and claim in one transaction: no other consumer can claim in between.

        One query reads the row's events with their messages; once none is held or waiting
        for a retry, they are claimed as read (the transaction keeps them so).
        """
        def work(conn: sqlite3.Connection) -> tuple[Closing, list[Any]]:
            if not self._take(conn, row, now + lease):
                return Closing('lost'), []
            rows = self._contents(conn.execute, row, disjoint, message=_MESSAGE)
            items = [Indexed(r[0], r[1], r[2], r[3], r[4], first=r[5]) for r in rows]
            if not items:
                self._done(conn, row, [], sweep=True)
                return Closing('empty'), []
            busy = [item.lease or now for item in items if item.state != AVAILABLE]
            if busy:
                conn.execute(f'UPDATE et_windows SET due = ? WHERE {_ROW}',
                             (busy_until(busy, now), self.spec, row.key, row.start, row.end))
                return Closing('busy'), []
            lifecycle.hold(conn, self.stream, token, now + lease, sorted(item.id for item in items))
            # the contents query's order (ORDER BY e.t, e.msg) is the window's
            return Closing('claimed', items=items, ordered=True), [(r[0], *r[6:]) for r in rows]
        closing, rows = self.db.write(work)
        closing.messages, bad = messages_of(rows)
        if bad:  # a message whose data cannot be read is dead-lettered with the reason, as the store does
            getattr(self.store, '_bury')(self.stream, bad, CLAIMED, token)
        for message in closing.messages:
            message.token = token
        return closing

    def commit(self, row: Row, token: str, done: Sequence[RecordId], back: Sequence[RecordId], keep: bool,
               window_id: RecordId | None, data: list[Any] | None) -> tuple[int, RecordId]:
        """Messages, window record and row in one transaction: a window costs two writes, as a count window."""
        return self.commit_many([Commit(row, token, done, back, keep, window_id, data)])[0]

    def commit_many(self, commits: Sequence[Commit]) -> list[tuple[int, RecordId]]:
        """All in one transaction: the pages their messages share (keys interleave) are written once."""
        encoded = ['[]' if c.data is None else dumps(list(c.data)) for c in commits]

        def work(conn: sqlite3.Connection) -> list[tuple[int, RecordId]]:
            results = []
            now = time.time()
            for c, data_json in zip(commits, encoded):
                count = lifecycle.commit(conn, self.stream, c.token, c.done, c.keep)
                wid = c.window_id
                if wid is None:
                    wid = lifecycle.insert_window(conn, self.stream, now, data_json, processed=True)
                else:
                    lifecycle.mark_window(conn, wid)
                if c.back:
                    lifecycle.unclaim(conn, self.stream, c.token, c.back)
                self._done(conn, c.row, c.done, unmark=False)
                results.append((count, wid))
            return results
        results: list[tuple[int, RecordId]] = self.db.write(work)
        for c in commits:
            self._forgotten += c.done
        if len(self._forgotten) >= FORGET_BATCH or time.monotonic() >= self._next_forget:
            self.forget([])
        return results

    def reschedule(self, row: Row, due: float) -> None:
        self.db.write(lambda conn: conn.execute(
            f'UPDATE et_windows SET due = ? WHERE {_ROW} AND state = {TAKEN}', (due, self.spec, row.key, row.start,
                                                                              row.end)))

    def reopen(self, rows: Iterable[Row]) -> None:
        now = time.time()
        params = [(now, self.spec, row.key, row.start, row.end) for row in rows]
        if params:
            self.db.write(lambda conn: conn.executemany(
                f'UPDATE et_windows SET due = ? WHERE {_ROW} AND state = {TAKEN}', params))

    def done(self, row: Row, ids: Sequence[RecordId], sweep: bool = False) -> None:
        self.db.write(lambda conn: self._done(conn, row, ids, sweep))

    def _done(self, conn: sqlite3.Connection, row: Row, ids: Sequence[RecordId], sweep: bool = False,
              unmark: bool = True) -> None:
        """:meth:`done` in ``conn``'s transaction; ``unmark`` False: the marks of ``ids`` are left to :meth:`forget`."""
        if self.counting:  # nothing is late for count windows: a done row is not needed any more
            conn.execute(f'DELETE FROM et_windows WHERE {_ROW}', (self.spec, row.key, row.start, row.end))
        else:
            conn.execute(f'UPDATE et_windows SET state = {DONE}, due = wend WHERE {_ROW}',
                         (self.spec, row.key, row.start, row.end))
        window = (self.sid, row.key, row.start, row.end)
        for chunk in chunks(ids):  # the row's entries are one range: ids only pick among them
            conn.execute(f'DELETE FROM et_entries WHERE {_RANGE} AND msg IN ({marks(chunk)})', (*window, *chunk))
        if unmark:
            _unmark(conn, self.sid, ids)
        # dead letters leave the index (requeued, they are indexed again, as late events); with sweep, also
        # entries whose messages are gone (committed just before a crash): reads only, unless there are any
        gone = (f'NOT EXISTS (SELECT 1 FROM buffer b WHERE b.id = et_entries.msg AND b.state IN {_IN_STREAM})'
                if sweep else f"EXISTS (SELECT 1 FROM buffer b WHERE b.id = et_entries.msg AND b.state = '{DEAD}')")
        left = conn.execute(f'DELETE FROM et_entries WHERE {_RANGE} AND {gone} RETURNING msg', window).fetchall()
        _unmark(conn, self.sid, [msg for msg, in left])
        # rows the watermark passed by more than the span: late by the watermark alone
        conn.execute(f'DELETE FROM et_windows WHERE spec = ? AND state = {DONE} AND due <= '
                     '(SELECT max_t - grace - span FROM et_specs WHERE spec = ?)', (self.spec, self.spec))

    def rows(self, key: str, lo: float, hi: float) -> dict[tuple[float, float], int]:
        found = self.db.read('SELECT wstart, wend, state FROM et_windows WHERE spec = ? AND key = ? AND wend > ?'
                             ' AND wstart < ?', (self.spec, key, lo, hi))
        return {(ws, we): state for ws, we, state in found}

    # -- late events ------------------------------------------------------
    def late(self, limit: int) -> list[Indexed]:
        rows = self.db.read(
            'SELECT e.msg, e.key, e.t, b.state, b.lease, e.ws, e.we FROM et_entries e JOIN buffer b ON b.id = e.msg'
            f' WHERE e.sid = ? AND e.late = 1 AND b.state = ? AND e.msg NOT IN ({lifecycle.CLAIMED_IDS})'
            ' ORDER BY e.msg LIMIT ?', (self.sid, AVAILABLE, self.stream, limit))
        return [Indexed(r[0], r[1], r[2], r[3], r[4], window=(r[5], r[6])) for r in rows]

    def forget(self, ids: Sequence[RecordId]) -> None:
        """As the contract says for late events' ``ids`` (an on-time entry goes with its window's commit);
        also writes the marks of committed messages waiting for their batch (see FORGET_BATCH)."""
        marked = sorted(set(ids) | set(self._forgotten))  # in id order: each page of et_marks is touched once
        self._forgotten, self._next_forget = [], time.monotonic() + FORGET_EVERY

        def work(conn: sqlite3.Connection) -> None:
            for chunk in chunks(list(ids)):
                conn.execute(f'DELETE FROM et_entries WHERE sid = ? AND late = 1 AND msg IN ({marks(chunk)})',
                             (self.sid, *chunk))
            _unmark(conn, self.sid, marked)
        if marked:
            self.db.write(work)

    def next_due(self, clock_lag: float | None) -> float | None:
        (open_due,), = self.db.read(f'SELECT min(due) FROM et_windows WHERE spec = ? AND state = {OPEN}', (self.spec,))
        (taken_due,), = self.db.read(f'SELECT min(due) FROM et_windows WHERE spec = ? AND state = {TAKEN}',
                                     (self.spec,))
        dues = [taken_due] + ([open_due + clock_lag] if open_due is not None and clock_lag is not None else [])
        known = [d for d in dues if d is not None]
        return min(known) if known else None


def _has_tables(store: Store) -> bool:
    db: Any = getattr(store, 'db')
    return bool(db.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'et_specs'"))


def figures(store: Store, stream: str) -> dict[str, Any]:
    """``watermark`` (epoch seconds or None), ``open_windows``, ``late`` over the specs of ``stream``."""
    if not _has_tables(store):
        return {'watermark': None, 'open_windows': 0, 'late': 0}
    db: Any = getattr(store, 'db')
    specs = db.read('SELECT spec, max_t - grace, late FROM et_specs WHERE stream = ?', (stream,))
    marks_ = marks(specs)
    open_windows = db.read(f'SELECT count(*) FROM et_windows WHERE state != {DONE} AND spec IN ({marks_})',
                           [s[0] for s in specs])[0][0] if specs else 0
    marks_seen = [s[1] for s in specs if s[1] is not None]
    return {'watermark': max(marks_seen) if marks_seen else None, 'open_windows': open_windows,
            'late': sum(s[2] for s in specs)}


def forget_stream(store: Store, stream: str) -> None:
    """Remove every spec of ``stream`` with its index and window rows."""
    if not _has_tables(store):
        return
    db: Any = getattr(store, 'db')

    db.write(lambda conn: _forget_specs(conn, [row[0] for row in conn.execute(
        'SELECT spec FROM et_specs WHERE stream = ?', (stream,))]))


def _forget_specs(conn: sqlite3.Connection, specs: list[str]) -> None:
    sids = [(row[0],) for spec in specs for row in conn.execute('SELECT sid FROM et_specs WHERE spec = ?', (spec,))]
    for table in ('et_entries', 'et_marks'):
        conn.executemany(f'DELETE FROM {table} WHERE sid = ?', sids)
    for table in ('et_windows', 'et_keys', 'et_specs'):
        conn.executemany(f'DELETE FROM {table} WHERE spec = ?', [(s,) for s in specs])


def _unmark(conn: sqlite3.Connection, sid: int, ids: Sequence[RecordId]) -> None:
    """Delete the marks of ``ids`` for spec ``sid`` (in id order: each page once)."""
    for chunk in chunks(sorted(ids)):
        conn.execute(f'DELETE FROM et_marks WHERE msg IN ({marks(chunk)}) AND sid = ?', (*chunk, sid))
