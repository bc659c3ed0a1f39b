"""The embedded store's message life cycle: the SQL that claims, commits, releases and expires messages.

Each function runs inside a write transaction its caller opened
(:meth:`~minibatch.store.sqlite_connection.Database.write`), on one connection,
so that the store can put several of them in one transaction (a commit and its
window record). States and their meaning: :mod:`minibatch.store.base`.

Operations on listed messages filter with ``+stream``: without statistics the
planner would otherwise walk the stream's whole index instead of looking up the
ids by primary key, which made a claim cost O(stream length).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, DONE, RETRY, Message, RecordId

CHUNK = 500  # ids per IN (...) list, well below SQLite's bound-parameter limit

UNCLAIM = f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, claim = NULL, lease = NULL WHERE"
REQUEUE = (f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, attempts = 0, error = NULL,"
           ' claim = NULL, lease = NULL')
PURGE = 'DELETE FROM buffer'


def chunks(ids: Iterable[Any]) -> Iterator[list[int]]:
    # Message objects (as find_available returns them) are accepted wherever ids are
    keys = ids if type(ids) is list and all(type(i) is int for i in ids) else [int(getattr(i, 'id', i)) for i in ids]
    for start in range(0, len(keys), CHUNK):
        yield keys[start:start + CHUNK]


def marks(ids: Sequence[object]) -> str:
    return ','.join('?' * len(ids))


def claim(conn: sqlite3.Connection, name: str, ids: Iterable[Any], token: str, until: float,
          columns: str) -> list[Any]:
    """Claim the still available messages among ``ids``; return their ``columns`` (in no defined order)."""
    rows: list[Any] = []
    for chunk in chunks(ids):
        rows += conn.execute(
            f"UPDATE buffer SET state = '{CLAIMED}', processed = 1, claim = ?, lease = ?"
            f" WHERE +stream = ? AND state = '{AVAILABLE}' AND id IN ({marks(chunk)})"
            f' RETURNING {columns}', (token, until, name, *chunk)).fetchall()
    return rows


def claim_known(conn: sqlite3.Connection, name: str, messages: Sequence[Message], token: str,
                until: float, attempts: int) -> set[RecordId] | None:
    """Claim the still available ``messages``; return None if all were claimed, else the ids that were.

    Only messages whose ``attempts`` are still ``attempts`` (as the caller read
    them) are claimed: one that failed since keeps its place for the next read,
    so the caller's copies are never stale (the backoff of a retry is computed
    from them).
    """
    ids = [m.id for m in messages]
    sql = (f"UPDATE buffer SET state = '{CLAIMED}', processed = 1, claim = ?, lease = ?"
           f" WHERE +stream = ? AND state = '{AVAILABLE}' AND attempts = ? AND id IN ")
    count = 0
    for chunk in chunks(ids):
        count += conn.execute(f'{sql}({marks(chunk)})', (token, until, name, attempts, *chunk)).rowcount
    if count == len(ids):
        return None  # the usual case: no RETURNING rows to fetch and match
    held: set[RecordId] = set()
    for chunk in chunks(ids):  # some were taken by others: which are ours (still in the transaction)
        held.update(row[0] for row in conn.execute(
            f'SELECT id FROM buffer WHERE claim = ? AND lease = ? AND id IN ({marks(chunk)})', (token, until, *chunk)))
    return held


def on_token(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], name: str, token: str | None,
             ids: Iterable[RecordId]) -> int:
    """Run ``sql`` (ending in a WHERE clause) on ``ids`` still claimed under ``token``; return the rowcount."""
    count = 0
    for chunk in chunks(ids):
        count += conn.execute(
            f"{sql} claim = ? AND +stream = ? AND state = '{CLAIMED}' AND id IN ({marks(chunk)})",
            (*params, token, name, *chunk)).rowcount
    return count


def renew(conn: sqlite3.Connection, name: str, token: str, until: float) -> int:
    return conn.execute(f"UPDATE buffer SET lease = ? WHERE claim = ? AND stream = ? AND state = '{CLAIMED}'",
                        (until, token, name)).rowcount


def commit(conn: sqlite3.Connection, name: str, token: str | None, ids: Sequence[RecordId], keep: bool) -> int:
    """Delete the messages still held under ``token`` (or mark them done, with ``keep``); return the count."""
    if keep:
        sql = f"UPDATE buffer SET state = '{DONE}', processed = 1, claim = NULL, lease = NULL WHERE"
    else:
        sql = 'DELETE FROM buffer WHERE'
    return on_token(conn, sql, (), name, token, ids) if ids else 0


def release(conn: sqlite3.Connection, name: str, token: str, ids: Sequence[RecordId], error: str | None,
            max_attempts: int, backoff: float, now: float) -> tuple[int, int]:
    """Count a failed attempt: retry after ``backoff`` (at once if 0) or dead-letter; return (retried, dead)."""
    # SET expressions see the old row, so "attempts + 1" is the new attempt count throughout
    later = f"CASE WHEN ? > 0 THEN '{RETRY}' ELSE '{AVAILABLE}' END"
    new_state = f"CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE {later} END"
    sql = (f'UPDATE buffer SET attempts = attempts + 1, error = ?, claim = NULL, state = {new_state},'
           f' processed = CASE WHEN attempts + 1 < ? AND ? <= 0 THEN 0 ELSE 1 END,'
           f' lease = CASE WHEN attempts + 1 < ? AND ? > 0 THEN ? ELSE NULL END'
           f" WHERE claim = ? AND +stream = ? AND state = '{CLAIMED}' AND id IN ")
    states: list[Any] = []
    for chunk in chunks(ids):
        states += conn.execute(
            f'{sql} ({marks(chunk)}) RETURNING state',
            (error, max_attempts, backoff, max_attempts, backoff, max_attempts, backoff, now + backoff,
             token, name, *chunk)).fetchall()
    dead = sum(1 for (state,) in states if state == DEAD)
    return len(states) - dead, dead


def expire(conn: sqlite3.Connection, name: str, max_attempts: int, now: float) -> int:
    """Make expired claims (one attempt counted) and retries whose backoff is over available again.

    The unprocessed window records of the claims that expired go too (see :func:`drop_orphaned_windows`).
    """
    lapsed = f"WHERE stream = ? AND state = '{CLAIMED}' AND lease < ?"
    # the claims that lapsed, read first (the update clears them); when none did, that one read is all
    tokens = [token for (token,) in conn.execute(f'SELECT DISTINCT claim FROM buffer {lapsed}', (name, now))]
    expired = 0
    if tokens:
        # an abandoned claim counts as a failed delivery
        expired = conn.execute(
            f"UPDATE buffer SET attempts = attempts + 1, error = 'lease expired', claim = NULL, lease = NULL,"
            f" state = CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE '{AVAILABLE}' END,"
            f' processed = CASE WHEN attempts + 1 >= ? THEN 1 ELSE 0 END {lapsed}',
            (max_attempts, max_attempts, name, now)).rowcount
    backed_off = conn.execute(
        f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, lease = NULL"
        f" WHERE stream = ? AND state = '{RETRY}' AND lease <= ?", (name, now)).rowcount
    if tokens:
        drop_orphaned_windows(conn, name, tokens)
    return expired + backed_off


def drop_orphaned_windows(conn: sqlite3.Connection, name: str, tokens: Sequence[str]) -> int:
    """Delete the unprocessed window records of the claims ``tokens`` that hold no message any more.

    Called when those claims' leases expired: their consumer died or hung, the
    messages go out again in a new window with a record of its own, and nobody
    will commit the old one. A claim that still holds a message (part of a
    window topped up later, with a later lease) keeps its record. Returns the count.
    """
    removed = 0
    for start in range(0, len(tokens), CHUNK):
        chunk = tokens[start:start + CHUNK]
        removed += conn.execute(
            f'DELETE FROM windows WHERE stream = ? AND processed = 0 AND token IN ({marks(chunk)}) AND NOT EXISTS'
            f" (SELECT 1 FROM buffer WHERE buffer.stream = windows.stream AND state = '{CLAIMED}'"
            '  AND claim = windows.token)', (name, *chunk)).rowcount
    return removed


def bury(conn: sqlite3.Connection, name: str, bad: Sequence[tuple[RecordId, str]], state: str = AVAILABLE,
         token: str | None = None) -> int:
    """Dead-letter the messages ``bad`` (``(id, why)``: data that cannot be decoded) still in ``state``.

    ``token``: only those claimed with it (``state`` CLAIMED). Returns the count.
    """
    sql = (f"UPDATE buffer SET state = '{DEAD}', processed = 1, error = ?, claim = NULL, lease = NULL"
           f' WHERE id = ? AND +stream = ? AND state = ?')
    if token is not None:
        sql += ' AND claim = ?'
    return sum(conn.execute(sql, (why, int(id_), name, state, *(() if token is None else (token,)))).rowcount
               for id_, why in bad)


def on_dead(conn: sqlite3.Connection, sql: str, name: str, ids: Iterable[RecordId] | None) -> int:
    """Run ``sql`` (REQUEUE, PURGE) on the dead letters of ``name`` among ``ids`` (None: all); return the count."""
    if ids is None:
        return conn.execute(f"{sql} WHERE stream = ? AND state = '{DEAD}'", (name,)).rowcount
    by_id = f"{sql} WHERE +stream = ? AND state = '{DEAD}'"
    return sum(conn.execute(f'{by_id} AND id IN ({marks(chunk)})', (name, *chunk)).rowcount
               for chunk in chunks(ids))


def insert_window(conn: sqlite3.Connection, name: str, now: float, data: str, query: str = '[]',
                  processed: bool = False, token: str | None = None) -> RecordId:
    """Write a window record (``data`` and ``query`` as JSON text) of the claim ``token``; return its id."""
    return conn.execute('INSERT INTO windows (stream, created, data, query, processed, token)'
                        ' VALUES (?, ?, ?, ?, ?, ?)', (name, now, data, query, int(processed), token)).lastrowid


def mark_window(conn: sqlite3.Connection, window_id: RecordId) -> None:
    conn.execute('UPDATE windows SET processed = 1 WHERE id = ?', (int(window_id),))
