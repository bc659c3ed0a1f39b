"""The embedded store: one SQLite file in WAL mode, shared by the processes of one machine.

URLs follow SQLAlchemy: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``,
optionally ``?synchronous=FULL`` (default NORMAL), ``&timeout=SECONDS`` (busy timeout) and
``&readonly=true`` (open the file read-only, creating nothing; see
:class:`~minibatch.store.sqlite_connection.Database`).

Concurrency model: every process and thread has its own connection, in
autocommit mode; every write is one ``BEGIN IMMEDIATE`` transaction
(:mod:`~minibatch.store.sqlite_connection`). A claim is one row of the
``claims`` table naming the messages it holds, written after checking, in the
same transaction, that none of them is claimed already: SQLite serialises
writers, so two consumers can never take the same message
(:mod:`~minibatch.store.sqlite_messages`). A window costs two writes: its
claim, and its commit, which writes the window record in the same transaction.

This module is the store's front: the contract's methods, each one read or one
transaction. Values and rows: :mod:`~minibatch.store.sqlite_values`;
wake-ups: :mod:`~minibatch.store.sqlite_waiter`.
"""
from __future__ import annotations

import datetime
import logging
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, cast

from minibatch.errors import InvalidMessage
from minibatch.store import eventtime
from minibatch.store import sqlite_group_reads as in_place
from minibatch.store import sqlite_groups as groups
from minibatch.store import sqlite_messages as lifecycle
from minibatch.store.base import (AVAILABLE, CLAIMED, DEAD, Doc, Message, Output, RecordId,
                                  StatusPath, Store, StreamInfo, WindowRecord, utcnow)
from minibatch.store.sqlite_connection import Database
from minibatch.store.sqlite_inspection import SQLiteInspection
from minibatch.store.sqlite_values import (AVAILABLE_COLUMNS, MESSAGE_COLUMNS, STREAM_COLUMNS,
                                           available_messages_of, dumps, loads, messages_of, serialise, stream_of,
                                           stream_values, to_datetime, to_epoch)
from minibatch.store.sqlite_waiter import FileWaiter

__all__ = ['SQLiteStore', 'FileWaiter']

_by_id = operator.attrgetter('id')
_first = operator.itemgetter(0)
logger = logging.getLogger(__name__)


class SQLiteStore(SQLiteInspection, Store):
    """The embedded store: one SQLite file in WAL mode, shared by the processes of one machine.

    Every write is one ``BEGIN IMMEDIATE`` transaction; a claim checks and
    records the messages it takes (one row of ``claims``) in one, so claims are
    atomic across processes. Ids come from AUTOINCREMENT: they only increase and are
    never reused.

    ``readonly=True`` (or ``?readonly=true``) opens the file read-only, as does
    a file this user may not write: reads work, writes raise ConfigurationError
    (see :class:`~minibatch.store.sqlite_connection.Database`).
    """
    querysets = False
    # the write lock held longer than busy timeout plus retries: worth waiting out
    transient_errors = (ConnectionError, sqlite3.OperationalError)
    #: a named group's consumers read the stream's new messages in place, not copies (sqlite_group_reads)
    reads_groups_in_place = True
    #: ``readonly=True`` opens the file without creating or writing anything (read-only tools use it)
    opens_read_only: ClassVar[bool] = True

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.db = Database(url, **options)
        #: the database file, an absolute path
        self.path = self.db.path
        self._write = self.db.write
        self._read = self.db.read

    # -- life cycle -------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def describe(self) -> str:
        return self.db.describe()

    # -- streams ----------------------------------------------------------
    def ensure_stream(self, name: str, **defaults: Any) -> StreamInfo:
        values = stream_values(defaults)
        if self.db.read_only_now():
            # nothing to write for a stream that exists as asked: mb.stream(name).stats() works read-only
            info = self.get_stream(name)
            if info is not None and all(values.get(key) in (None, getattr(info, key))
                                        for key in ('interval', 'max_age')):
                return info
        created = values.get('created') or to_epoch(utcnow())
        record: dict[str, Any] = {'created': created, 'last_read': created, 'interval': 1.0, 'closed': 0,
                  'max_age': None, 'status': '{}'}
        record.update({k: v for k, v in values.items() if v is not None})

        def work(conn: sqlite3.Connection) -> Any:
            conn.execute(f'INSERT OR IGNORE INTO streams ({STREAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)',
                         (name, record['created'], record['last_read'], record['interval'], record['closed'],
                          record['max_age'], record['status']))
            for key in ('interval', 'max_age'):
                if values.get(key) is not None:
                    conn.execute(f'UPDATE streams SET {key} = ? WHERE name = ?', (values[key], name))
            return conn.execute(f'SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?', (name,)).fetchone()
        return stream_of(self._write(work))

    def get_stream(self, name: str) -> StreamInfo | None:
        rows = self._read(f'SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?', (name,))
        return stream_of(rows[0]) if rows else None

    def list_streams(self) -> list[StreamInfo]:
        return [stream_of(row) for row in self._read(f'SELECT {STREAM_COLUMNS} FROM streams ORDER BY name')]

    def update_stream(self, name: str, **fields: Any) -> None:
        values = stream_values(fields)
        if not values:
            return None
        assignments = ', '.join(f'{key} = ?' for key in values)
        self._write(lambda conn: conn.execute(f'UPDATE streams SET {assignments} WHERE name = ?',
                                              (*values.values(), name)))

    def set_status(self, name: str, path: StatusPath, value: Any) -> None:
        where = '$' + ''.join(f'."{key}"' for key in self._check_status_path(path))
        params: tuple[Any, ...]
        if value is None:
            sql, params = 'UPDATE streams SET status = json_remove(status, ?) WHERE name = ?', (where, name)
        else:
            try:
                encoded = dumps(value)
            except (TypeError, ValueError) as exc:
                raise InvalidMessage(f'status value cannot be stored: {exc}') from exc
            sql, params = 'UPDATE streams SET status = json_set(status, ?, json(?)) WHERE name = ?', (where, encoded, name)
        self._write(lambda conn: conn.execute(sql, params))

    def compare_and_set_last_read(self, name: str, expected: datetime.datetime | None,
                                  new: datetime.datetime) -> bool:
        # one conditional UPDATE: SQLite serialises writers, so one racer matches, the others see the new value.
        # Half a microsecond of tolerance absorbs float rounding of a datetime read back and passed in again.
        params: tuple[Any, ...]
        if expected is None:
            sql, params = 'UPDATE streams SET last_read = ? WHERE name = ? AND last_read IS NULL', (to_epoch(new), name)
        else:
            sql = 'UPDATE streams SET last_read = ? WHERE name = ? AND abs(last_read - ?) < 5e-7'
            params = (to_epoch(new), name, to_epoch(expected))
        return self._write(lambda conn: conn.execute(sql, params).rowcount) == 1

    def delete_stream(self, name: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for table, column in (('buffer', 'stream'), ('claims', 'stream'), ('windows', 'stream'),
                                  ('consumers', 'stream'), ('stream_counters', 'stream'), ('streams', 'name')):
                conn.execute(f'DELETE FROM {table} WHERE {column} = ?', (name,))
        self._write(work)
        eventtime.forget_stream(self, name)  # watermark, windows and index of event-time consumers

    def clear(self, name: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            removed = conn.execute('DELETE FROM buffer WHERE stream = ?', (name,)).rowcount
            conn.execute('DELETE FROM claims WHERE stream = ?', (name,))
            conn.execute('DELETE FROM windows WHERE stream = ?', (name,))
            return removed
        removed = self._write(work)
        eventtime.forget_stream(self, name)  # a cleared stream starts with a fresh watermark
        return removed

    # -- producing --------------------------------------------------------
    def validate(self, docs: Iterable[Doc]) -> None:
        for i, doc in enumerate(docs):
            serialise(doc, i)

    def validated_copies(self, docs: Iterable[Doc]) -> list[Doc]:
        """Validate ``docs`` as :meth:`validate` does; return copies, as they will read back.

        For batching producers: a later change to the caller's dicts cannot
        alter (or poison) a message waiting in a batch.
        """
        return [loads(serialise(doc, i)) for i, doc in enumerate(docs)]

    def append(self, name: str, docs: Sequence[Doc]) -> list[RecordId]:
        # validate everything before the transaction: a bad document writes none of the batch
        rows = [(name, serialise(doc, i)) for i, doc in enumerate(self._batch(docs, 'append'))]
        if not rows:
            return []

        def work(conn: sqlite3.Connection) -> list[RecordId]:
            now = time.time()
            conn.executemany('INSERT INTO buffer (stream, created, data) VALUES (?, ?, ?)',
                             [(stream, now, data) for stream, data in rows])
            # under the write lock AUTOINCREMENT hands out consecutive ids, so the batch ends at the last one
            last = conn.execute('SELECT last_insert_rowid()').fetchone()[0]
            return list(range(last - len(rows) + 1, last + 1))
        return self._write(work)

    def append_dead(self, name: str, docs: Sequence[Doc], error: str) -> list[RecordId]:
        rows = [serialise(doc, i) for i, doc in enumerate(self._batch(docs, 'append_dead'))]
        if not rows:
            return []

        def work(conn: sqlite3.Connection) -> list[RecordId]:
            now = time.time()
            conn.executemany(f"INSERT INTO buffer (stream, created, data, state, processed, error)"
                             f" VALUES (?, ?, ?, '{DEAD}', 1, ?)",
                             [(name, now, data, str(error)) for data in rows])
            last = conn.execute('SELECT last_insert_rowid()').fetchone()[0]
            return list(range(last - len(rows) + 1, last + 1))
        return self._write(work)

    # -- consuming --------------------------------------------------------
    def find_available(self, name: str, limit: int | None = None,
                       until: datetime.datetime | None = None) -> list[Message]:
        params: list[Any] = [name, name]  # the claimed are left out (see sqlite_messages)
        sql = (f"SELECT {AVAILABLE_COLUMNS} FROM buffer WHERE stream = ? AND state = '{AVAILABLE}'"
               f' AND id NOT IN ({lifecycle.CLAIMED_IDS})')
        if until is not None:
            sql += ' AND created < ?'
            params.append(to_epoch(until))
        sql += ' ORDER BY id'
        if limit is not None:
            sql += ' LIMIT ?'
            params.append(int(limit))
        rows = self._read(sql, params)
        if in_place.is_group_stream(name):  # a named group's stream: its copies and the stream's messages it reads in place
            fresh = in_place.available(self.db.conn(), name, limit, None if until is None else to_epoch(until),
                                       AVAILABLE_COLUMNS)
            if fresh:
                rows = sorted(rows + fresh, key=_first)[:limit]
        messages, bad = available_messages_of(name, rows)
        if bad:
            self._bury(name, bad, AVAILABLE)
        return messages

    def _bury(self, name: str, bad: list[tuple[RecordId, str]], state: str, token: str | None = None) -> None:
        """Dead-letter messages whose data cannot be decoded, with the reason: they must not block the others."""
        for id_, why in bad:
            logger.error('minibatch: stream %r: message %s dead-lettered: %s', name, id_, why)
        self._write(lambda conn: lifecycle.bury(conn, name, bad, token))

    def claim(self, name: str, ids: Sequence[RecordId | Message], token: str, lease: float) -> list[Message]:
        if not ids:
            return []
        # leases are timed from inside the write transaction: waiting for the write lock must not shorten them
        first = ids[0]
        if type(first) is Message and all(type(m) is Message and m.attempts == first.attempts for m in ids):
            # read by find_available: their data need not be read and decoded again. They are claimed
            # only while their attempts are as read, so these copies are current (a retry's backoff is
            # computed from them); with mixed attempts, the general path reads the rows back.
            messages = cast(list[Message], list(ids))  # all Message: checked above
            attempts = first.attempts
            held = self._write(lambda conn: self._claim_known(conn, name, messages, token, time.time() + lease,
                                                              attempts))
            claimed = messages if held is None else list({m.id: m for m in messages if m.id in held}.values())
            for message in claimed:
                message.state, message.token = CLAIMED, token
        else:
            rows = self._write(lambda conn: self._claim_rows(conn, name, ids, token, time.time() + lease))
            claimed, bad = messages_of(rows)
            if bad:
                self._bury(name, bad, CLAIMED, token)
            for message in claimed:
                message.state, message.token = CLAIMED, token
        claimed.sort(key=_by_id)  # in id order (callers may pass any)
        return claimed

    @staticmethod
    def _claim_known(conn: sqlite3.Connection, name: str, messages: list[Message], token: str, until: float,
                     attempts: int) -> set[RecordId] | None:
        """lifecycle.claim_known, and for a group stream the stream's messages it reads in place among them."""
        held = lifecycle.claim_known(conn, name, messages, token, until, attempts)
        if held is None or not in_place.is_group_stream(name):
            return held
        taken = in_place.claim(conn, name, [m.id for m in messages if m.id not in held])
        if taken:
            lifecycle.hold(conn, name, token, until, taken)
            held |= set(taken)
        return None if len(held) == len(messages) else held

    @staticmethod
    def _claim_rows(conn: sqlite3.Connection, name: str, ids: Sequence[RecordId | Message], token: str,
                    until: float) -> list[Any]:
        """lifecycle.claim (rows of MESSAGE_COLUMNS), and for a group stream the messages it reads in place."""
        rows = lifecycle.claim(conn, name, ids, token, until, MESSAGE_COLUMNS)
        if not in_place.is_group_stream(name):
            return rows
        got = {row[0] for row in rows}
        wanted = [i.id if isinstance(i, Message) else i for i in ids]
        taken = in_place.claim(conn, name, [int(i) for i in wanted if int(i) not in got])
        if taken:
            lifecycle.hold(conn, name, token, until, taken)
            rows += conn.execute(f"SELECT id, ?, created, data, '{AVAILABLE}', 0, NULL FROM buffer WHERE id IN"
                                 f" ({','.join('?' * len(taken))})", (name, *taken)).fetchall()
        return rows

    def renew(self, name: str, token: str, lease: float) -> int:
        return self._write(lambda conn: lifecycle.renew(conn, name, token, time.time() + lease))

    def commit(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
               window_id: RecordId | None = None, output: Output | None = None) -> int:
        if not ids and window_id is None:
            return 0
        return self._write(self._commit_work(name, token, ids, keep, window_id, False, None, output))[0]

    def commit_window(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
                      data: list[Any] | None = None, output: Output | None = None) -> tuple[int, RecordId]:
        # the window record goes into the commit's transaction: a window costs two writes (claim, commit)
        count, window_id = self._write(self._commit_work(name, token, ids, keep, None, True, data, output))
        return count, cast(RecordId, window_id)

    def commit_soon(self, name: str, token: str | None, ids: Sequence[RecordId],
                    then: Callable[[int, RecordId | None], None], keep: bool = False,
                    window_id: RecordId | None = None, record: bool = False, data: list[Any] | None = None,
                    output: Output | None = None) -> None:
        """Queued for this process's next write transaction (Database.write_soon): one turn at the lock less."""
        if not ids and window_id is None and not record:
            then(0, None)
            return
        work = self._commit_work(name, token, ids, keep, window_id, record, data, output)
        # a work that failed (logged by the queue) committed nothing
        self.db.write_soon(work, lambda result: then(*(result or (0, window_id))))

    def flush(self) -> None:
        self.db.flush()

    def _commit_work(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool,
                     window_id: RecordId | None, record: bool, data: list[Any] | None,
                     output: Output | None) -> Callable[[sqlite3.Connection], tuple[int, RecordId | None]]:
        """The transaction of a commit: with ``record`` a new processed window record, else ``window_id`` marked.

        Data and output are encoded first: a bad document raises here, and nothing is written.
        """
        data_json = ('[]' if data is None else self._window_json(name, data)) if record else None
        appended = self._output_rows(output)

        def work(conn: sqlite3.Connection) -> tuple[int, RecordId | None]:
            count = lifecycle.commit(conn, name, token, ids, keep or groups.has_named(conn, name)) if ids else 0
            if count:
                self._append_output(conn, appended)
            if data_json is not None:
                return count, lifecycle.insert_window(conn, name, time.time(), data_json, processed=True)
            if window_id is not None:
                lifecycle.mark_window(conn, window_id)
            return count, window_id
        return work

    def _output_rows(self, output: Output | None) -> tuple[str, list[str]] | None:
        """``output`` validated and encoded before the transaction: a bad document fails the commit, writing nothing."""
        if output is None:
            return None
        target, docs = output
        return target, [serialise(doc, i) for i, doc in enumerate(self._batch(docs, 'commit(output=...)'))]

    @staticmethod
    def _append_output(conn: sqlite3.Connection, appended: tuple[str, list[str]] | None) -> None:
        """Append the encoded output of a commit, in the commit's transaction: both or neither."""
        if appended and appended[1]:
            now = time.time()
            conn.executemany('INSERT INTO buffer (stream, created, data) VALUES (?, ?, ?)',
                             [(appended[0], now, data) for data in appended[1]])

    def release(self, name: str, token: str, ids: Sequence[RecordId], error: object = None,
                max_attempts: int = 3, backoff: float = 0.0) -> tuple[int, int]:
        if not ids:
            return 0, 0
        now, text = time.time(), None if error is None else str(error)
        return self._write(lambda conn: lifecycle.release(conn, name, token, ids, text, max_attempts, backoff, now))

    def unclaim(self, name: str, token: str, ids: Sequence[RecordId]) -> int:
        if not ids:
            return 0
        return self._write(lambda conn: lifecycle.unclaim(conn, name, token, ids))

    def expire_leases(self, name: str, max_attempts: int = 3) -> int:
        now = time.time()
        return self._write(lambda conn: lifecycle.expire(conn, name, max_attempts, now))

    # -- groups -----------------------------------------------------------
    def register_group(self, name: str, group: str, start: str = 'earliest', keep: bool = False) -> bool:
        now = time.time()
        return self._write(lambda conn: groups.register(conn, name, group, start, keep, now))

    def pull(self, name: str, group: str, limit: int) -> int:
        # a read first: a group that is caught up (the common case of an idle round) takes no write lock
        if not groups.has_new(self.db.conn(), name, group):
            return 0
        return self._write(lambda conn: groups.pull(conn, name, group, limit))

    def delete_group(self, name: str, group: str) -> bool:
        return self._write(lambda conn: groups.delete_group(conn, name, group))

    def replay(self, name: str, group: str, since: datetime.datetime | RecordId | None = None) -> int:
        return self._write(lambda conn: groups.replay(conn, name, group, since))

    def retain(self, name: str) -> int:
        return self._write(lambda conn: groups.retain(conn, name))

    def take_turn(self, name: str, job: str, seconds: float) -> bool:
        now = time.time()
        return self._write(lambda conn: groups.take_turn(conn, name, job, seconds, now))

    def group_lag(self, name: str, group: str) -> tuple[int, datetime.datetime | None]:
        count, oldest = groups.lag(self.db.conn(), name, group)
        return count, None if oldest is None else to_datetime(oldest)

    # -- dead letters -----------------------------------------------------
    def requeue(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        return self._write(lambda conn: lifecycle.on_dead(conn, lifecycle.REQUEUE, name, ids))

    def purge_dead(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        return self._write(lambda conn: lifecycle.on_dead(conn, lifecycle.PURGE, name, ids))

    # -- windows ----------------------------------------------------------
    @staticmethod
    def _window_json(name: str, data: Iterable[Any]) -> str:
        try:
            return dumps(list(data))
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f'window data of stream {name!r} cannot be stored: {exc}') from exc

    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None,
                    token: str | None = None) -> RecordId:
        data_json, query_json = self._window_json(name, data), self._window_json(name, query or [])
        now = time.time()
        return self._write(lambda conn: lifecycle.insert_window(conn, name, now, data_json, query_json,
                                                                token=token))

    def windows(self, name: str, processed: bool | None = None) -> list[WindowRecord]:
        params: list[Any] = [name]
        sql = 'SELECT id, stream, created, data, processed, query FROM windows WHERE stream = ?'
        if processed is not None:
            sql += ' AND processed = ?'
            params.append(int(bool(processed)))
        return [WindowRecord(id=id_, stream=stream, created=to_datetime(created), data=loads(data),
                             processed=bool(done), query=loads(query))
                for id_, stream, created, data, done, query in self._read(sql + ' ORDER BY id', params)]

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name: str) -> FileWaiter:
        return FileWaiter(self, name)

