"""The embedded store: one SQLite file in WAL mode, shared by the processes of one machine.

URLs follow SQLAlchemy: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``,
optionally ``?synchronous=FULL`` (default NORMAL) and ``&timeout=SECONDS`` (busy timeout).

Concurrency model: every process and thread has its own connection (SQLite
connections must not cross a fork), in autocommit mode; every write is one
``BEGIN IMMEDIATE`` transaction, so the write lock is taken up front and a
transaction never fails half-way when upgrading from a read lock. Claims are a
single ``UPDATE ... WHERE state='available' RETURNING``: SQLite serialises
writers, so two consumers can never take the same message.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload
from urllib.parse import parse_qsl

from minibatch.errors import ConfigurationError, InvalidMessage, StoreUnavailable
from minibatch.store.base import (AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Doc, Message, RecordId,
                                  StatusPath, Store, StreamInfo, Waiter, WindowRecord, utcnow)

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    last_read REAL,
    interval REAL NOT NULL DEFAULT 1.0,
    closed INTEGER NOT NULL DEFAULT 0,
    max_age REAL,
    status TEXT NOT NULL DEFAULT '{}'
);
-- AUTOINCREMENT: ids are never reused after deletes, so they only ever increase
CREATE TABLE IF NOT EXISTS buffer (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'available',
    processed INTEGER NOT NULL DEFAULT 0,
    claim TEXT,
    lease REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
-- One index serves every query: the next available messages in id order
-- (find_available), claimed and retrying ones by lease (expire_leases, renew),
-- dead letters in order, counts per state (covering), housekeeping. A claim or
-- commit moves one entry of one index per message, and lookups by id use the key.
-- (Indexes of earlier versions are dropped: each cost a write per message.)
DROP INDEX IF EXISTS buffer_available;
DROP INDEX IF EXISTS buffer_state;
DROP INDEX IF EXISTS buffer_settled;
DROP INDEX IF EXISTS buffer_claim;
CREATE INDEX IF NOT EXISTS buffer_stream_state ON buffer (stream, state, id);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0,
    query TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS windows_stream ON windows (stream, processed, id);
-- running totals per stream, e.g. 'expired' (messages max_age removed unprocessed);
-- a table of its own so that files of earlier versions need no ALTER TABLE
CREATE TABLE IF NOT EXISTS stream_counters (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, name)
);
CREATE TABLE IF NOT EXISTS consumers (
    stream TEXT NOT NULL,
    id TEXT NOT NULL,
    seen REAL NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (stream, id)
);
"""

STREAM_FIELDS = ('created', 'last_read', 'interval', 'closed', 'max_age', 'status')
STREAM_COLUMNS = 'name, ' + ', '.join(STREAM_FIELDS)
MESSAGE_COLUMNS = 'id, stream, created, data, state, attempts, error'
SYNCHRONOUS = ('OFF', 'NORMAL', 'FULL', 'EXTRA')
OPTIONS = ('synchronous', 'timeout')
LOCK_RETRIES = 5
CHUNK = 500  # ids per IN (...) list, well below SQLite's bound-parameter limit
_T = TypeVar('_T')

# A connection inherited through fork() must never be closed in the child, not
# even by garbage collection: closing it drops the child's POSIX locks on the
# file, those of its own fresh connections included. So at fork the child parks
# every inherited connection in _inherited, never to touch it again.
_open: weakref.WeakSet[_Holder] = weakref.WeakSet()  # the _Holder of every connection this process opened
_inherited: list[_Holder] = []
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _inherited.extend(_open)
    _open.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- values ---------------------------------------------------------------
def _ts(value: datetime.datetime | float | None) -> float | None:
    """Naive-UTC datetime (or aware datetime, or epoch number) -> float epoch seconds."""
    if value is None or isinstance(value, (int, float)):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


# (epoch, datetime) of the last conversion: a batch shares one timestamp
_last_dt: tuple[float | None, datetime.datetime | None] = (None, None)


@overload
def _dt(value: float) -> datetime.datetime: ...


@overload
def _dt(value: None) -> None: ...


def _dt(value: float | None) -> datetime.datetime | None:
    """Float epoch seconds -> naive UTC datetime (microsecond precision, as written)."""
    global _last_dt
    if value is None:
        return None
    last = _last_dt  # one read of an immutable pair: safe across threads
    if value == last[0]:
        return last[1]
    converted = datetime.datetime.fromtimestamp(value, datetime.timezone.utc).replace(tzinfo=None)
    _last_dt = (value, converted)
    return converted


def _encode_default(value: object) -> dict[str, str]:
    # datetimes are tagged so that they come back as datetimes, not strings
    if isinstance(value, (datetime.datetime, datetime.date)):
        return {'$date': value.isoformat()}
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get('$date'), str):
        text = obj['$date']
        try:
            if 'T' in text:
                return datetime.datetime.fromisoformat(text)
            return datetime.date.fromisoformat(text)
        except ValueError:
            pass  # a user dict that merely looks like ours: keep it as it is
    return obj


# made once: json.dumps() with options builds a new encoder on every call
_encoder = json.JSONEncoder(default=_encode_default, separators=(',', ':'))
_decoder = json.JSONDecoder(object_hook=_decode_hook)


def dumps(value: object) -> str:
    return _encoder.encode(value)


_plain_decoder = json.JSONDecoder()


def loads(text: str) -> Any:
    # the object hook costs a Python call per dict: skip it when no date can be inside
    return (_decoder if '"$date"' in text else _plain_decoder).decode(text)


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _is_plain(value: dict[Any, Any] | list[Any], depth: int = 0) -> bool:
    """Fast path of the check below: True if ``value`` (a dict or list) surely round-trips through JSON.

    Exact types only and a depth bound; anything unusual (subclasses, dates,
    deep or circular data) returns False and gets the thorough check.
    """
    if depth > 32:
        return False
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind not in _PLAIN and not ((kind is dict or kind is list) and _is_plain(item, depth + 1)):
                return False
        return True
    for item in value:
        kind = type(item)
        if kind not in _PLAIN and not ((kind is dict or kind is list) and _is_plain(item, depth + 1)):
            return False
    return True


def _find_unserialisable(value: object, path: str, parents: tuple[int, ...] = ()) -> tuple[str, str] | None:
    """Return (where, why) for the first part of ``value`` that JSON cannot carry faithfully, else None."""
    if isinstance(value, (dict, list, tuple)):
        if id(value) in parents:
            return path, 'a circular reference'
        parents = (*parents, id(value))
        items: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            # JSON would silently turn a non-str key into a str: refuse rather than alter the data
            if isinstance(value, dict) and not isinstance(key, str):
                return f'{path} key {key!r}', f'keys must be str, not {type(key).__name__}'
            found = _find_unserialisable(item, f'{path}[{key!r}]', parents)
            if found:
                return found
    elif not isinstance(value, (str, int, float, type(None), datetime.date)):
        return f'{path} = {value!r}', f'{type(value).__name__} is not serialisable'
    return None


def serialise(doc: object, index: int) -> str:
    """JSON text of message ``doc`` (number ``index`` of its batch), or InvalidMessage saying why not."""
    if not isinstance(doc, dict):
        raise InvalidMessage(f'message #{index} is not a dict: {doc!r} ({type(doc).__name__})')
    if type(doc) is dict and _is_plain(doc):
        return dumps(doc)
    found = _find_unserialisable(doc, 'message')
    if found:
        where, why = found
        raise InvalidMessage(f'message #{index} cannot be stored: {where} ({why})')
    return dumps(doc)


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return 'locked' in text or 'busy' in text


def _chunks(ids: Iterable[Any]) -> Iterator[list[int]]:
    # Message objects (as find_available returns them) are accepted wherever ids are
    keys = [int(getattr(i, 'id', i)) for i in ids]
    for start in range(0, len(keys), CHUNK):
        yield keys[start:start + CHUNK]


def _on_token(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], name: str, token: str | None,
              ids: Iterable[RecordId]) -> int:
    """Run ``sql`` (ending in a WHERE clause) on ``ids`` still claimed under ``token``; return the rowcount.

    (``+stream`` here and wherever ids are listed: without statistics the
    planner would otherwise walk the stream's whole index instead of looking
    up the ids by primary key, which made a claim cost O(stream length).)
    """
    count = 0
    for chunk in _chunks(ids):
        count += conn.execute(
            f"{sql} claim = ? AND +stream = ? AND state = '{CLAIMED}' AND id IN ({_marks(chunk)})",
            (*params, token, name, *chunk)).rowcount
    return count


def _marks(ids: Sequence[object]) -> str:
    return ','.join('?' * len(ids))


def _message(row: Sequence[Any], data: Doc | None = None) -> Message:
    id_, stream, created, text, state, attempts, error = row
    return Message(id=id_, stream=stream, created=_dt(created), data=loads(text) if data is None else data,
                   state=state, attempts=attempts, error=error)


def _messages(rows: Sequence[Sequence[Any]]) -> list[Message]:
    """Message objects of ``rows``; their JSON decoded in one call when no date tag needs the hook."""
    texts = [row[3] for row in rows]
    if len(texts) > 1 and not any('"$date"' in text for text in texts):
        return [_message(row, data) for row, data in zip(rows, _plain_decoder.decode('[' + ','.join(texts) + ']'))]
    return [_message(row) for row in rows]


def _stream(row: Sequence[Any]) -> StreamInfo:
    name, created, last_read, interval, closed, max_age, status = row
    return StreamInfo(name=name, created=_dt(created), last_read=_dt(last_read), interval=interval,
                      closed=bool(closed), max_age=max_age, status=json.loads(status or '{}'))


def _stream_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(STREAM_FIELDS)
    if unknown:
        raise ConfigurationError(f'unknown stream field(s) {", ".join(sorted(unknown))}; '
                                 f'known: {", ".join(STREAM_FIELDS)}')
    values = dict(fields)
    for key in ('created', 'last_read'):
        if key in values:
            values[key] = _ts(values[key])
    if 'closed' in values:
        values['closed'] = int(bool(values['closed']))
    if 'status' in values:
        values['status'] = json.dumps(values['status'] or {}, default=str)
    return values


class _Holder:
    """A thread's connection; weak-referenceable (sqlite3.Connection is not) so close() can find it."""
    __slots__ = ('conn', 'pid', '__weakref__')

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = os.getpid()


class SQLiteStore(Store):
    """The embedded store: one SQLite file in WAL mode, shared by the processes of one machine.

    Every write is one ``BEGIN IMMEDIATE`` transaction; claims are a single
    ``UPDATE ... RETURNING`` on rows still available, so they are atomic
    across processes. Ids come from AUTOINCREMENT: they only increase and are
    never reused.
    """
    querysets = False
    # the write lock held longer than busy timeout plus retries: worth waiting out
    transient_errors = (ConnectionError, sqlite3.OperationalError)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        rest = url.partition('://')[2]
        rest, _, query = rest.partition('?')
        path = rest[1:] if rest.startswith('/') else ''
        if not path or path == ':memory:' or path.startswith('file:'):
            raise ConfigurationError(
                f'{url!r} names no database file: use sqlite:///relative/path.db or '
                f'sqlite:////absolute/path.db (an in-memory database cannot be shared between processes)')
        settings: dict[str, Any] = dict(parse_qsl(query))
        settings.update(options)
        unknown = set(settings) - set(OPTIONS)
        if unknown:
            raise ConfigurationError(f'the SQLite store does not accept {", ".join(sorted(unknown))}; '
                                     f'it accepts the options: {", ".join(OPTIONS)}')
        self.synchronous = str(settings.get('synchronous', 'NORMAL')).upper()
        if self.synchronous not in SYNCHRONOUS:
            raise ConfigurationError(f'synchronous={self.synchronous!r} is not one of {", ".join(SYNCHRONOUS)}')
        try:
            self.timeout = float(settings.get('timeout', 30.0))
        except ValueError:
            raise ConfigurationError(f'timeout must be a number of seconds, not {settings["timeout"]!r}')
        # resolved now, so that a later chdir() does not move the database
        self.path = os.path.abspath(path)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._ready = False

    # -- connections ------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        holder: _Holder | None = getattr(self._local, 'holder', None)
        if holder is not None and holder.conn is not None and holder.pid == os.getpid():
            return holder.conn
        conn = self._connect()
        holder = self._local.holder = _Holder(conn)
        with _lock:
            self._holders.add(holder)
            _open.add(holder)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # isolation_level=None: autocommit; we issue BEGIN IMMEDIATE ourselves.
            # check_same_thread=False only so that close() may close other threads' connections.
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f'cannot open {self.describe()}: {exc}') from exc
        try:
            conn.execute(f'PRAGMA synchronous={self.synchronous}')
            if not self._ready:
                self._init_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f'cannot use {self.describe()}: {exc}') from exc
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        # journal_mode=WAL is persistent in the file; readers then never block the writer
        mode = conn.execute('PRAGMA journal_mode=WAL').fetchone()[0]
        if mode.lower() != 'wal':
            logger.warning('%s: WAL mode unavailable (journal_mode=%s); concurrency will suffer',
                           self.describe(), mode)
        conn.execute('BEGIN IMMEDIATE')
        try:
            for statement in SCHEMA.split(';'):
                if statement.strip():
                    conn.execute(statement)
            conn.execute('COMMIT')
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        self._ready = True

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE transaction and return its result.

        The busy timeout already waits for the write lock; a few more tries
        cover a lock held longer than that. A failed try is rolled back before
        the next, so nothing is written twice or half.
        """
        for attempt in range(LOCK_RETRIES):
            conn = self._conn()
            try:
                conn.execute('BEGIN IMMEDIATE')
                try:
                    result = work(conn)
                    conn.execute('COMMIT')
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute('ROLLBACK')
                    raise
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                logger.debug('%s locked, retrying (%s)', self.path, exc)
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError('unreachable: the last try returns or raises')

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # fetchall() so that no statement stays open and pins an old WAL snapshot
        for attempt in range(LOCK_RETRIES):
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError('unreachable: the last try returns or raises')

    # -- life cycle -------------------------------------------------------
    def close(self) -> None:
        pid = os.getpid()
        with _lock:
            holders = [h for h in self._holders if h.pid == pid]
        for holder in holders:
            conn, holder.conn = holder.conn, None
            if conn is not None:
                conn.close()

    def describe(self) -> str:
        return f'sqlite:///{self.path} (embedded)'

    # -- streams ----------------------------------------------------------
    def ensure_stream(self, name: str, **defaults: Any) -> StreamInfo:
        values = _stream_values(defaults)
        created = values.get('created') or _ts(utcnow())
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
        return _stream(self._write(work))

    def get_stream(self, name: str) -> StreamInfo | None:
        rows = self._read(f'SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?', (name,))
        return _stream(rows[0]) if rows else None

    def list_streams(self) -> list[StreamInfo]:
        return [_stream(row) for row in self._read(f'SELECT {STREAM_COLUMNS} FROM streams ORDER BY name')]

    def update_stream(self, name: str, **fields: Any) -> None:
        values = _stream_values(fields)
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
            sql, params = 'UPDATE streams SET last_read = ? WHERE name = ? AND last_read IS NULL', (_ts(new), name)
        else:
            sql = 'UPDATE streams SET last_read = ? WHERE name = ? AND abs(last_read - ?) < 5e-7'
            params = (_ts(new), name, _ts(expected))
        return self._write(lambda conn: conn.execute(sql, params).rowcount) == 1

    def delete_stream(self, name: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for table, column in (('buffer', 'stream'), ('windows', 'stream'), ('consumers', 'stream'),
                                  ('stream_counters', 'stream'), ('streams', 'name')):
                conn.execute(f'DELETE FROM {table} WHERE {column} = ?', (name,))
        self._write(work)

    def clear(self, name: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            removed = conn.execute('DELETE FROM buffer WHERE stream = ?', (name,)).rowcount
            conn.execute('DELETE FROM windows WHERE stream = ?', (name,))
            return removed
        return self._write(work)

    # -- producing --------------------------------------------------------
    def validate(self, docs: Iterable[Doc]) -> None:
        for i, doc in enumerate(docs):
            serialise(doc, i)

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
        params: list[Any] = [name]
        sql = f"SELECT {MESSAGE_COLUMNS} FROM buffer WHERE stream = ? AND state = '{AVAILABLE}'"
        if until is not None:
            sql += ' AND created < ?'
            params.append(_ts(until))
        sql += ' ORDER BY id'
        if limit is not None:
            sql += ' LIMIT ?'
            params.append(int(limit))
        return _messages(self._read(sql, params))

    def claim(self, name: str, ids: Sequence[RecordId | Message], token: str, lease: float) -> list[Message]:
        if not ids:
            return []
        until = time.time() + lease
        # messages we already read (from find_available) need not be decoded again
        known = {m.id: m for m in ids if isinstance(m, Message)}
        columns = 'id' if len(known) == len(ids) else MESSAGE_COLUMNS

        def work(conn: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            for chunk in _chunks(ids):
                rows += conn.execute(
                    f"UPDATE buffer SET state = '{CLAIMED}', processed = 1, claim = ?, lease = ?"
                    f" WHERE +stream = ? AND state = '{AVAILABLE}' AND id IN ({_marks(chunk)})"
                    f' RETURNING {columns}', (token, until, name, *chunk)).fetchall()
            return rows
        rows = self._write(work)
        if columns == 'id':
            claimed = [known[row[0]] for row in rows]
            for message in claimed:
                message.state = CLAIMED
        else:
            claimed = [_message(row) for row in rows]
        for message in claimed:
            message.token = token
        # RETURNING has no defined order
        return sorted(claimed, key=lambda m: m.id)

    def _by_token(self, sql: str, params: tuple[Any, ...], name: str, token: str,
                  ids: Sequence[RecordId]) -> int:
        """Run ``sql`` (ending in a WHERE clause) on ``ids`` still claimed under ``token``; return the rowcount."""
        return self._write(lambda conn: _on_token(conn, sql, params, name, token, ids)) if ids else 0

    def renew(self, name: str, token: str, lease: float) -> int:
        return self._write(lambda conn: conn.execute(
            f"UPDATE buffer SET lease = ? WHERE claim = ? AND stream = ? AND state = '{CLAIMED}'",
            (time.time() + lease, token, name)).rowcount)

    def commit(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
               window_id: RecordId | None = None) -> int:
        if keep:
            sql = f"UPDATE buffer SET state = '{DONE}', processed = 1, claim = NULL, lease = NULL WHERE"
        else:
            sql = 'DELETE FROM buffer WHERE'

        def work(conn: sqlite3.Connection) -> int:
            count = _on_token(conn, sql, (), name, token, ids)
            if window_id is not None:
                conn.execute('UPDATE windows SET processed = 1 WHERE id = ?', (int(window_id),))
            return count
        return self._write(work) if ids or window_id is not None else 0

    def release(self, name: str, token: str, ids: Sequence[RecordId], error: object = None,
                max_attempts: int = 3, backoff: float = 0.0) -> tuple[int, int]:
        if not ids:
            return 0, 0
        now = time.time()
        # SET expressions see the old row, so "attempts + 1" is the new attempt count throughout
        later = f"CASE WHEN ? > 0 THEN '{RETRY}' ELSE '{AVAILABLE}' END"
        new_state = f"CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE {later} END"
        sql = (f'UPDATE buffer SET attempts = attempts + 1, error = ?, claim = NULL, state = {new_state},'
               f' processed = CASE WHEN attempts + 1 < ? AND ? <= 0 THEN 0 ELSE 1 END,'
               f' lease = CASE WHEN attempts + 1 < ? AND ? > 0 THEN ? ELSE NULL END'
               f" WHERE claim = ? AND +stream = ? AND state = '{CLAIMED}' AND id IN ")
        error = None if error is None else str(error)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            states: list[Any] = []
            for chunk in _chunks(ids):
                states += conn.execute(
                    f'{sql} ({_marks(chunk)}) RETURNING state',
                    (error, max_attempts, backoff, max_attempts, backoff, max_attempts, backoff, now + backoff,
                     token, name, *chunk)).fetchall()
            dead = sum(1 for (state,) in states if state == DEAD)
            return len(states) - dead, dead
        return self._write(work)

    def unclaim(self, name: str, token: str, ids: Sequence[RecordId]) -> int:
        return self._by_token(f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, claim = NULL, lease = NULL"
                              ' WHERE', (), name, token, ids)

    def expire_leases(self, name: str, max_attempts: int = 3) -> int:
        now = time.time()

        def work(conn: sqlite3.Connection) -> int:
            # an abandoned claim counts as a failed delivery
            expired = conn.execute(
                f"UPDATE buffer SET attempts = attempts + 1, error = 'lease expired', claim = NULL, lease = NULL,"
                f" state = CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE '{AVAILABLE}' END,"
                f' processed = CASE WHEN attempts + 1 >= ? THEN 1 ELSE 0 END'
                f" WHERE stream = ? AND state = '{CLAIMED}' AND lease < ?",
                (max_attempts, max_attempts, name, now)).rowcount
            backed_off = conn.execute(
                f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, lease = NULL"
                f" WHERE stream = ? AND state = '{RETRY}' AND lease <= ?", (name, now)).rowcount
            return expired + backed_off
        return self._write(work)

    # -- dead letters -----------------------------------------------------
    def _dead(self, sql: str, name: str, ids: Iterable[RecordId] | None) -> int:
        if ids is None:
            return self._write(lambda conn: conn.execute(f"{sql} WHERE stream = ? AND state = '{DEAD}'",
                                                         (name,)).rowcount)
        by_id = f"{sql} WHERE +stream = ? AND state = '{DEAD}'"  # by primary key: see _on_token

        def work(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(f'{by_id} AND id IN ({_marks(chunk)})', (name, *chunk)).rowcount
                       for chunk in _chunks(ids))
        return self._write(work)

    def requeue(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        return self._dead(f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, attempts = 0, error = NULL,"
                          ' claim = NULL, lease = NULL', name, ids)

    def purge_dead(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        return self._dead('DELETE FROM buffer', name, ids)

    # -- windows ----------------------------------------------------------
    def save_window(self, name: str, data: list[Any], query: list[Any] | None = None) -> RecordId:
        try:
            data_json, query_json = dumps(list(data)), dumps(list(query or []))
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f'window data of stream {name!r} cannot be stored: {exc}') from exc
        return self._write(lambda conn: conn.execute(
            'INSERT INTO windows (stream, created, data, query) VALUES (?, ?, ?, ?)',
            (name, time.time(), data_json, query_json)).lastrowid)

    def windows(self, name: str, processed: bool | None = None) -> list[WindowRecord]:
        params: list[Any] = [name]
        sql = 'SELECT id, stream, created, data, processed, query FROM windows WHERE stream = ?'
        if processed is not None:
            sql += ' AND processed = ?'
            params.append(int(bool(processed)))
        return [WindowRecord(id=id_, stream=stream, created=_dt(created), data=loads(data),
                             processed=bool(done), query=loads(query))
                for id_, stream, created, data, done, query in self._read(sql + ' ORDER BY id', params)]

    # -- inspection and housekeeping --------------------------------------
    def messages(self, name: str, state: str | None = None, limit: int | None = None) -> list[Message]:
        params: list[Any] = [name]
        sql = f'SELECT {MESSAGE_COLUMNS} FROM buffer WHERE stream = ?'
        if state is not None:
            sql += ' AND state = ?'
            params.append(state)
        sql += ' ORDER BY id'
        if limit is not None:
            sql += ' LIMIT ?'
            params.append(int(limit))
        return [_message(row) for row in self._read(sql, params)]

    def counts(self, name: str) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._read('SELECT state, count(*) FROM buffer WHERE stream = ? GROUP BY state', (name,)))
        counts['windows'] = self._read('SELECT count(*) FROM windows WHERE stream = ?', (name,))[0][0]
        expired = self._read("SELECT value FROM stream_counters WHERE stream = ? AND name = 'expired'", (name,))
        counts['expired'] = expired[0][0] if expired else 0
        return counts

    def housekeep(self, name: str, max_age: float) -> tuple[int, int]:
        cutoff = time.time() - max_age

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            expired = conn.execute(f"DELETE FROM buffer WHERE stream = ? AND state IN ('{AVAILABLE}', '{RETRY}')"
                                   " AND created < ?", (name, cutoff)).rowcount
            done = conn.execute(f"DELETE FROM buffer WHERE stream = ? AND state = '{DONE}' AND created < ?",
                                (name, cutoff)).rowcount
            windows = conn.execute('DELETE FROM windows WHERE stream = ? AND processed = 1 AND created < ?',
                                   (name, cutoff)).rowcount
            if expired:
                conn.execute("INSERT INTO stream_counters (stream, name, value) VALUES (?, 'expired', ?)"
                             ' ON CONFLICT (stream, name) DO UPDATE SET value = value + excluded.value',
                             (name, expired))
            return expired + done + windows, expired
        return self._write(work)

    # -- consumers --------------------------------------------------------
    def heartbeat(self, name: str, consumer: str, info: Mapping[str, Any]) -> None:
        try:
            info_json = dumps(dict(info))
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f'consumer info of {consumer!r} cannot be stored: {exc}') from exc
        self._write(lambda conn: conn.execute(
            'INSERT OR REPLACE INTO consumers (stream, id, seen, info) VALUES (?, ?, ?, ?)',
            (name, str(consumer), time.time(), info_json)))

    def consumers(self, name: str) -> list[dict[str, Any]]:
        rows = self._read('SELECT id, seen, info FROM consumers WHERE stream = ? ORDER BY id', (name,))
        return [{**loads(info), 'id': cid, 'seen': _dt(seen)} for cid, seen, info in rows]

    def forget_consumers(self, name: str, older_than: float) -> int:
        cutoff = time.time() - older_than
        return self._write(lambda conn: conn.execute(
            'DELETE FROM consumers WHERE stream = ? AND seen < ?', (name, cutoff)).rowcount)

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name: str) -> FileWaiter:
        return FileWaiter(self, name)


class FileWaiter(Waiter):
    """Wakes when the database files change; polls file metadata every few ms, never the database.

    Any commit by any process changes the -wal file (and the wal-index header
    in -shm, whose change counter moves even when a rewritten WAL keeps its size
    within one mtime tick). Writes to other streams wake it too: spurious
    wake-ups are allowed, missed ones are not.
    """
    poll = 0.005
    # every commit is seen, so a consumer may wait long between checks of the store
    supported = True
    sees_all_changes = True
    store: SQLiteStore

    def __init__(self, store: SQLiteStore, stream: str) -> None:
        super().__init__(store, stream)
        self._seen = self._signature()

    def _signature(self) -> list[object]:
        path = self.store.path
        signature: list[object] = []
        for suffix in ('', '-wal'):
            try:
                st = os.stat(path + suffix)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append(None)
        try:
            with open(path + '-shm', 'rb') as shm:
                signature.append(shm.read(48))  # the wal-index header (its first copy)
        except OSError:
            signature.append(None)
        return signature

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self.poll, remaining))
