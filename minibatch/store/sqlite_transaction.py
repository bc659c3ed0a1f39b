"""Write transactions of the embedded store: the write lock, retries, and writes that ride with the next one.

Every write is one ``BEGIN IMMEDIATE`` transaction (:meth:`Transactions.write`):
the write lock is taken up front, in short steps (:meth:`Transactions._begin`).

A consumer's rounds alternate two write transactions: the commit of the window
just run, then the claim of the next. SQLite has one writer, so with several
processes writing (consumer groups, competing consumers) every transaction is
also a turn at the lock. :meth:`Transactions.write_soon` lets a write whose
result nobody waits for go into this process's next write transaction instead,
run first in it (in order), and report its result through a callback once that
transaction has committed. :meth:`Transactions.flush` runs what is queued when
no other write comes (the runner calls it when a round cuts no window, and
when it stops).

The contract, for the work queued: a crash before the transaction that carries
it commits loses it. Only work whose loss a crash may cause belongs there: a
window's commit, whose messages are then delivered again once their lease ends
(at least once, as for a consumer that died before committing).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from minibatch.errors import ConfigurationError

logger = logging.getLogger('minibatch.store.sqlite')

LOCK_RETRIES = 5
#: the first and the longest pause (seconds) between tries to take the write lock (Transactions._begin)
WAIT_FIRST, WAIT_MAX = 0.00005, 0.002
_T = TypeVar('_T')


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is locked or busy (another connection holds the lock)."""
    text = str(exc).lower()
    return 'locked' in text or 'busy' in text


#: ``work(conn) -> result`` and ``then(result)``, called once the result is committed (None if the work failed)
Work = Callable[[sqlite3.Connection], Any]
Then = Callable[[Any], None]


class SoonQueue:
    """The queued work of one database in this process (a child process starts with none). Thread-safe."""

    def __init__(self) -> None:
        self._items: list[tuple[Work, Then]] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def put(self, work: Work, then: Then) -> None:
        """Queue ``work``; ``then(result)`` follows the commit of the transaction that runs it."""
        with self._mine():
            self._items.append((work, then))

    def take(self) -> list[tuple[Work, Then]]:
        """All queued work, oldest first, now the caller's to run (or to :meth:`put_back`)."""
        with self._mine():
            items, self._items = self._items, []
        return items

    def put_back(self, items: list[tuple[Work, Then]]) -> None:
        """Queue ``items`` again ahead of anything queued since (their transaction did not commit)."""
        if items:
            with self._mine():
                self._items[:0] = items

    def __len__(self) -> int:
        return len(self._items) if self._pid == os.getpid() else 0

    def _mine(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: the parent's work is the parent's (its lock may even be held)
            self._items, self._pid, self._lock = [], os.getpid(), threading.Lock()
        return self._lock


class QueuedWorkFailed(Exception):
    """Queued work number ``index`` raised ``error`` (not a locked/busy error); its transaction was rolled back."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def run_all(conn: sqlite3.Connection, items: list[tuple[Work, Then]]) -> list[Any]:
    """Run queued ``items`` in the caller's transaction; their results, in order.

    No savepoint per item: in WAL mode a savepoint copies every page it changes
    to a sub-journal, which cost more than the transaction it saved. An item that
    raises (but for a locked/busy error, raised as is) raises QueuedWorkFailed.
    """
    results = []
    for index, (work, _) in enumerate(items):
        try:
            results.append(work(conn))
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and is_locked(exc):
                raise
            raise QueuedWorkFailed(index, exc) from exc
    return results


def report(items: list[tuple[Work, Then]], results: list[Any]) -> None:
    """Call each item's ``then`` with its result (after the commit)."""
    for (_, then), result in zip(items, results):
        try:
            then(result)
        except Exception:  # noqa: BLE001 - the write that carried it succeeded; its caller must not see this
            logger.exception('minibatch: a callback after a queued commit failed')


class Transactions:
    """Write transactions of a :class:`~minibatch.store.sqlite_connection.Database` (a mixin).

    Uses the database's ``conn()``, ``read_only``, ``timeout``, ``path`` and ``describe()``.
    """
    timeout: float
    path: str
    read_only: str | None
    _soon: SoonQueue

    def conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE transaction and return its result.

        Work queued by :meth:`write_soon` runs first in the same transaction.
        :meth:`_begin` waits for the write lock, up to the busy timeout; a few more tries
        cover a lock held longer than that. A failed try is rolled back before
        the next, so nothing is written twice or half.
        """
        queued = self._soon.take()
        while True:
            try:
                result, results = self._transaction(work, queued)
                break
            except QueuedWorkFailed as failed:
                # rolled back with everything else: go on without it, so that it cannot fail the write it
                # rode with (the messages of a commit that failed so are delivered again when their lease ends)
                logger.error('minibatch: a queued commit failed (%s: %s); its messages are delivered again when '
                             'their lease ends', type(failed.error).__name__, failed.error)
                report([queued.pop(failed.index)], [None])
            except BaseException:
                self._soon.put_back(queued)  # not committed: they ride with the next write, or a flush
                raise
        report(queued, results)
        return result

    def write_soon(self, work: Callable[[sqlite3.Connection], _T], then: Callable[[_T | None], None]) -> None:
        """Queue ``work`` for this process's next write transaction; ``then(result)`` once that commits.

        Runs first in the next :meth:`write`, at the latest at :meth:`flush`; a
        work that raises there is logged and left out (``then(None)``), and the
        transaction is made again without it. Not durable until then: see the
        module's docstring for what may be queued.
        """
        self._soon.put(work, then)

    def flush(self) -> None:
        """Run the work :meth:`write_soon` queued, in one transaction; nothing when none is queued."""
        if len(self._soon):
            self.write(lambda conn: None)

    def _transaction(self, work: Callable[[sqlite3.Connection], _T], queued: list[Any]) -> tuple[_T, list[Any]]:
        for attempt in range(LOCK_RETRIES):
            conn = self.conn()
            if self.read_only:
                raise ConfigurationError(f'cannot write to {self.describe()}: it is read-only ({self.read_only})')
            try:
                self._begin(conn)
                try:
                    results = run_all(conn, queued) if queued else []
                    result = work(conn)
                    conn.execute('COMMIT')
                    return result, results
                except BaseException:
                    if conn.in_transaction:
                        conn.execute('ROLLBACK')
                    raise
            except sqlite3.OperationalError as exc:
                if not is_locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                logger.debug('%s locked, retrying (%s)', self.path, exc)
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError('unreachable: the last try returns or raises')

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting for the write lock in short steps (:func:`until_unlocked`)."""
        until_unlocked(lambda: conn.execute('BEGIN IMMEDIATE'), self.timeout)


def until_unlocked(attempt: Callable[[], _T], timeout: float) -> _T:
    """``attempt()``, tried again while it fails as locked/busy, for up to ``timeout`` s; then the error is raised.

    The embedded store's writable connections have no busy handler (busy_timeout
    0, set when they open): SQLite's sleeps 1, 2, 5, 10... ms between tries,
    while a write transaction here holds the lock for a fraction of a
    millisecond, so two processes taking turns (two consumer groups, competing
    consumers) would spend more time asleep than the other holds the lock.
    Here a locked try is made again after WAIT_FIRST s, the pause growing to WAIT_MAX s.
    """
    pause, deadline = WAIT_FIRST, None
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            now = time.monotonic()
            deadline = deadline or now + timeout
            if not is_locked(exc) or now >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 1.5, WAIT_MAX)
