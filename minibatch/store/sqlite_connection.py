"""The embedded store's file: its URL, schema, connections and write transactions.

Every process and thread has its own connection (SQLite connections must not
cross a fork), in autocommit mode; every write is one ``BEGIN IMMEDIATE``
transaction (:meth:`Database.write`, in :mod:`minibatch.store.sqlite_transaction`),
so the write lock is taken up front and a transaction never fails half-way when
upgrading from a read lock.

A file can be opened read-only (``readonly=True``, or by itself when this user
may not write the file or its folder): nothing is created, the schema is not
touched, and every write raises :class:`~minibatch.errors.ConfigurationError`.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, quote

from minibatch.errors import ConfigurationError, StoreUnavailable
from minibatch.store.sqlite_transaction import SoonQueue, Transactions, is_locked as _is_locked, until_unlocked

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
    error TEXT,
    -- a consumer group's copy: the id of the original message (minibatch.store.base_groups)
    origin INTEGER
);
-- One index serves every query: the next available messages in id order
-- (find_available), retrying ones by lease (expire_leases), dead letters in
-- order, counts per state (covering), housekeeping. A claim does not touch it (claims
-- have a table of their own, below), a commit removes or moves one entry per message,
-- and lookups by id use the key.
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
-- the claims in flight, one row each: the ids it holds (a JSON array) until its lease ends.
-- A claimed message's own row is not written at all (minibatch.store.sqlite_messages)
CREATE TABLE IF NOT EXISTS claims (
    token TEXT NOT NULL,
    stream TEXT NOT NULL,
    lease REAL NOT NULL,
    ids TEXT NOT NULL,
    PRIMARY KEY (token, stream)
) WITHOUT ROWID;
"""

SYNCHRONOUS = ('OFF', 'NORMAL', 'FULL', 'EXTRA')
OPTIONS = ('synchronous', 'timeout', 'readonly')
_BOOLEANS = {'1': True, 'true': True, 'yes': True, 'on': True, '0': False, 'false': False, 'no': False, 'off': False}
#: table name -> its CREATE statement (a read-only connection makes empty TEMP copies of the tables a file lacks)
TABLES = {match.group(1): match.group(0) for match in
          re.finditer(r'CREATE TABLE IF NOT EXISTS (\w+) \(.*?\n\)( WITHOUT ROWID)?;', SCHEMA, re.S)}
#: per connection, set when it opens (none of them is stored in the file). Measured with
#: benchmarks/run (docs/performance.rst): SQLite's default page cache (2 MiB) is smaller
#: than the pages a consumer's windows touch again and again, and its default checkpoint
#: (every 1,000 WAL pages, run inside the commit that crosses the line) copied pages
#: back to the file that the next windows were about to change anyway.
TUNING = (
    'PRAGMA cache_size = -65536',  # up to 64 MiB of pages per connection, filled only as pages are read
    'PRAGMA wal_autocheckpoint = 10000',  # checkpoint at ~40 MiB of WAL instead of ~4 MiB
    'PRAGMA journal_size_limit = 16777216',  # and give the WAL file back to 16 MiB after each one
)

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


class _Holder:
    """A thread's connection; weak-referenceable (sqlite3.Connection is not) so close() can find it."""
    __slots__ = ('conn', 'pid', 'stand_in', '__weakref__')

    def __init__(self, conn: sqlite3.Connection, stand_in: bool = False) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = os.getpid()
        #: an empty in-memory database standing in for a read-only file that does not exist (yet)
        self.stand_in = stand_in


class Database(Transactions):
    """One SQLite file in WAL mode: a connection per thread, transactions, reads.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, options
    ``synchronous`` (default NORMAL), ``timeout`` (the busy timeout, seconds)
    and ``readonly`` (default false) in the query string or as keywords.

    Read-only (``readonly=True``, or when the file exists and this user may
    not write it or its folder): opened with SQLite's ``mode=ro``, creating
    nothing; a file that does not exist reads as an empty store until it
    appears, and writes raise ConfigurationError saying why the file is read-only.
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
        readonly = settings.get('readonly', False)
        if isinstance(readonly, str):
            readonly = _BOOLEANS.get(readonly.lower(), readonly)
        if not isinstance(readonly, bool):
            raise ConfigurationError(f'readonly must be true or false, not {readonly!r}')
        #: why this file is open read-only, or None when it is writable (decided on first use when not asked)
        self.read_only: str | None = 'opened with readonly=True' if readonly else None
        # resolved now, so that a later chdir() does not move the database
        self.path = os.path.abspath(path)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._ready = False
        self._schema_lock = threading.Lock()
        self._schema_lock_pid = os.getpid()
        self._soon = SoonQueue()  # write_soon

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema made) on first use in this process."""
        holder: _Holder | None = getattr(self._local, 'holder', None)
        if holder is not None and holder.conn is not None and holder.pid == os.getpid():
            if not (holder.stand_in and os.path.exists(self.path)):
                return holder.conn
            holder.conn.close()  # the file appeared: read it instead of the empty stand-in
        if self.read_only is None and _unwritable(self.path):
            self.read_only = 'this user may not write the file or its folder'
            logger.info('%s: opened read-only: %s', self.describe(), self.read_only)
        conn, stand_in = self._connect_read_only() if self.read_only else (self._connect(), False)
        holder = self._local.holder = _Holder(conn, stand_in)
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
            for pragma in TUNING:
                conn.execute(pragma)
            # no busy handler: waits for a lock are the store's own, in short steps (sqlite_transaction)
            conn.execute('PRAGMA busy_timeout = 0')
            if not self._ready:
                self._init_schema_once(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f'cannot use {self.describe()}: {exc}') from exc
        return conn

    def read_only_now(self) -> bool:
        """Whether the file is open read-only (connecting first: a file we may not write is found out then)."""
        self.conn()
        return self.read_only is not None

    def _connect_read_only(self) -> tuple[sqlite3.Connection, bool]:
        """A connection that cannot write the file, and whether it is an empty stand-in (no file yet)."""
        exists = os.path.exists(self.path)
        try:
            conn = self._open_uri('mode=ro') if exists else sqlite3.connect(':memory:', isolation_level=None,
                                                                             check_same_thread=False)
            try:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.OperationalError as exc:
                # WAL needs the -wal and -shm files; a folder we cannot write has none (or mode=ro would have
                # used them): then no writer has the file open, and it may be read as an immutable one
                conn.close()
                why = getattr(exc, 'sqlite_errorname', '')
                if not why.startswith(('SQLITE_READONLY', 'SQLITE_CANTOPEN')) or os.path.exists(self.path + '-wal'):
                    raise
                conn = self._open_uri('immutable=1')
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # tables a file of an earlier version (or an empty one) lacks read as empty
            for name, create in TABLES.items():
                if name not in tables:
                    conn.execute(create.replace('CREATE TABLE IF NOT EXISTS', 'CREATE TEMP TABLE', 1))
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f'cannot open {self.describe()} read-only: {exc}') from exc
        return conn, not exists

    def _open_uri(self, mode: str) -> sqlite3.Connection:
        return sqlite3.connect(f'file:{quote(self.path)}?{mode}', uri=True, timeout=self.timeout,
                               isolation_level=None, check_same_thread=False)

    def _init_schema_once(self, conn: sqlite3.Connection) -> None:
        """Make the schema, once per process; another process doing it at the same time is waited out.

        Switching to WAL may fail with "database is locked" at once, without
        the busy timeout, while another connection is opening the file: so
        threads of this process take turns, and a locked try is repeated until
        the busy timeout has passed.
        """
        if self._schema_lock_pid != os.getpid():
            # a thread of the parent may have held it at a fork; the retry below covers two new locks racing
            self._schema_lock, self._schema_lock_pid = threading.Lock(), os.getpid()
        with self._schema_lock:
            deadline = time.monotonic() + self.timeout
            pause = 0.01
            while not self._ready:
                try:
                    self._init_schema(conn)
                except sqlite3.OperationalError as exc:
                    if not _is_locked(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)

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
            for statement in LATE_SCHEMA:
                conn.execute(statement)
            _move_old_claims(conn)
            conn.execute('COMMIT')
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        self._ready = True

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query, outside any transaction (WAL: never blocked by the writer)."""
        # fetchall() so that no statement stays open and pins an old WAL snapshot; a reader is locked out only
        # for a moment (another connection recovering the WAL after a crash, say): tried again up to the timeout
        return until_unlocked(lambda: self.conn().execute(sql, params).fetchall(), self.timeout)

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
ADDED_COLUMNS = (('windows', 'token', 'TEXT'), ('buffer', 'origin', 'INTEGER'))
#: made after ADDED_COLUMNS (they index added columns): only copies have an origin, so only they pay for it
LATE_SCHEMA = ('CREATE INDEX IF NOT EXISTS buffer_origin ON buffer (origin) WHERE origin IS NOT NULL',)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Add the :data:`ADDED_COLUMNS` a file of an earlier version lacks (inside the schema's transaction)."""
    for table, column, declaration in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f'PRAGMA table_info({table})')}:
            conn.execute(f'ALTER TABLE {table} ADD COLUMN {column} {declaration}')


def _move_old_claims(conn: sqlite3.Connection) -> None:
    """Turn the claims of files of earlier versions (rows in state 'claimed') into rows of ``claims``.

    Inside the schema's transaction; one indexed look per stream when there are none.
    """
    for (stream,) in conn.execute('SELECT name FROM streams').fetchall():
        old = conn.execute("SELECT claim, max(lease), json_group_array(id) FROM buffer"
                           " WHERE stream = ? AND state = 'claimed' GROUP BY claim", (stream,)).fetchall()
        for token, lease, ids in old:
            conn.execute('INSERT OR REPLACE INTO claims (token, stream, lease, ids) VALUES (?, ?, ?, ?)',
                         (token or '', stream, lease or 0.0, ids))
        if old:
            conn.execute("UPDATE buffer SET state = 'available' WHERE stream = ? AND state = 'claimed'", (stream,))


def _unwritable(path: str) -> bool:
    """True when ``path`` exists and this user may not write it or its folder (where WAL keeps -wal and -shm)."""
    return os.path.exists(path) and not (os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK))


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
