"""The embedded store's file: its URL, schema, connections and write transactions.

Every process and thread has its own connection (SQLite connections must not
cross a fork), in autocommit mode; every write is one ``BEGIN IMMEDIATE``
transaction (:meth:`Database.write`), so the write lock is taken up front and a
transaction never fails half-way when upgrading from a read lock.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from minibatch.errors import ConfigurationError, StoreUnavailable

logger = logging.getLogger('minibatch.store.sqlite')

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
    query TEXT NOT NULL DEFAULT '[]',
    -- the claim its messages are held under (expire_leases removes the record once none is)
    token TEXT
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

SYNCHRONOUS = ('OFF', 'NORMAL', 'FULL', 'EXTRA')
OPTIONS = ('synchronous', 'timeout')
LOCK_RETRIES = 5
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


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return 'locked' in text or 'busy' in text


class _Holder:
    """A thread's connection; weak-referenceable (sqlite3.Connection is not) so close() can find it."""
    __slots__ = ('conn', 'pid', '__weakref__')

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = os.getpid()


class Database:
    """One SQLite file in WAL mode: a connection per thread, transactions, reads.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, options
    ``synchronous`` (default NORMAL) and ``timeout`` (the busy timeout, seconds)
    in the query string or as keywords.
    """

    def __init__(self, url: str, **options: Any) -> None:
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

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema made) on first use in this process."""
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
            _create_private(self.path)
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
            _add_missing_columns(conn)
            conn.execute('COMMIT')
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        self._ready = True

    def write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE transaction and return its result.

        The busy timeout already waits for the write lock; a few more tries
        cover a lock held longer than that. A failed try is rolled back before
        the next, so nothing is written twice or half.
        """
        for attempt in range(LOCK_RETRIES):
            conn = self.conn()
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

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query, outside any transaction (WAL: never blocked by the writer)."""
        # fetchall() so that no statement stays open and pins an old WAL snapshot
        for attempt in range(LOCK_RETRIES):
            try:
                return self.conn().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError('unreachable: the last try returns or raises')

    def close(self) -> None:
        """Close this process's connections (another thread's too); the next use reconnects."""
        pid = os.getpid()
        with _lock:
            holders = [h for h in self._holders if h.pid == pid]
        for holder in holders:
            conn, holder.conn = holder.conn, None
            if conn is not None:
                conn.close()

    def describe(self) -> str:
        return f'sqlite:///{self.path} (embedded)'


#: columns added since the first release: (table, column, declaration); files of earlier versions get them
ADDED_COLUMNS = (('windows', 'token', 'TEXT'),)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Add the :data:`ADDED_COLUMNS` a file of an earlier version lacks (inside the schema's transaction)."""
    for table, column, declaration in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f'PRAGMA table_info({table})')}:
            conn.execute(f'ALTER TABLE {table} ADD COLUMN {column} {declaration}')


def _create_private(path: str) -> None:
    """Create the database file (and its folder) readable by its owner only, if they do not exist yet.

    Messages are user data: like ssh and gpg, a new folder is 0700 and a new
    file 0600, whatever the umask (SQLite gives its -wal and -shm files the
    database file's mode). Existing files and folders keep theirs.
    """
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
