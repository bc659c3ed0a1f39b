"""The embedded store's message life cycle: the SQL that claims, commits, releases and expires messages.

Each function runs inside a write transaction its caller opened
(:meth:`~minibatch.store.sqlite_connection.Database.write`), on one connection,
so that the store can put several of them in one transaction (a commit and its
window record). States and their meaning: :mod:`minibatch.store.base`.

**Claims live in a table of their own**, one row per claim (its token, its
stream, its lease and the ids it holds as a JSON array), not in the messages'
rows: a claimed message keeps ``state = 'available'`` in ``buffer`` and is
*claimed* because a claim holds its id. Claiming a window of 100 messages
therefore writes one small row instead of rewriting 100 rows and moving 100
index entries, and a commit deletes the messages as a bare consumer would plus
that one row. Every query for available messages leaves out the claimed ones
(:data:`CLAIMED_IDS`); a claim's row goes once it holds nothing, and the
claims of a stream go with the stream (clear, delete). A claim of a named group's
stream may also hold messages of the stream itself, read in place
(:mod:`~minibatch.store.sqlite_group_reads`): a commit lets go of them, and
whatever else ends such a claim first copies them into the group stream.

Operations on listed messages filter with ``+stream``: without statistics the
planner would otherwise walk the stream's whole index instead of looking up the
ids by primary key, which made a claim cost O(stream length).
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from minibatch.store import sqlite_group_reads as in_place
from minibatch.store.base import AVAILABLE, DEAD, DONE, RETRY, Message, RecordId

CHUNK = 500  # ids per IN (...) list, well below SQLite's bound-parameter limit

#: the ids of stream ``?``'s claimed messages (one parameter: the stream), for ``id [NOT] IN (...)``
CLAIMED_IDS = 'SELECT j.value FROM claims AS c, json_each(c.ids) AS j WHERE c.stream = ?'
#: (id, lease) of stream ``?``'s claimed messages, to join on
CLAIMED_LEASES = 'SELECT j.value AS id, c.lease AS lease FROM claims AS c, json_each(c.ids) AS j WHERE c.stream = ?'


def claimed_ids_but(tokens: Sequence[str], sql: str = CLAIMED_IDS) -> tuple[str, list[str]]:
    """``sql`` (CLAIMED_IDS or CLAIMED_LEASES) without the claims of ``tokens``, and the parameters after the stream.

    For a caller that knows those claims hold none of the ids it looks for: the
    claims left out are not read (each is a JSON array of its ids).
    """
    if not tokens:
        return sql, []
    return f"{sql} AND c.token NOT IN ({marks(tokens)})", list(tokens)

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


def _json_ids(ids: Sequence[int]) -> str:
    return '[' + ','.join(map(str, ids)) + ']'


def hold(conn: sqlite3.Connection, name: str, token: str, until: float, ids: Sequence[int]) -> None:
    """Record that claim ``token`` holds ``ids`` too, until ``until`` (a claim topped up keeps one row).

    One statement: a claim topped up (same token) gets the new ids appended to
    its JSON array (both are non-empty arrays: ``[1,2`` + ``,`` + ``3]``) and the later lease.
    """
    conn.execute('INSERT INTO claims (token, stream, lease, ids) VALUES (?, ?, ?, ?)'
                 ' ON CONFLICT (token, stream) DO UPDATE SET lease = excluded.lease,'
                 " ids = substr(ids, 1, length(ids) - 1) || ',' || substr(excluded.ids, 2)",
                 (token, name, until, _json_ids(ids)))


def let_go(conn: sqlite3.Connection, name: str, token: str | None, ids: Iterable[Any]) -> list[int]:
    """Take ``ids`` out of the claim ``token``; return those it held (the rest it never held, or no longer)."""
    if token is None:
        return []
    # the usual case is a commit of the whole claim: take the row out at once, put back what stays
    row = conn.execute('DELETE FROM claims WHERE token = ? AND stream = ? RETURNING lease, ids',
                       (token, name)).fetchone()
    if row is None:
        return []
    current: list[int] = json.loads(row[1])
    wanted = {int(getattr(i, 'id', i)) for i in ids}
    mine = [i for i in current if i in wanted]
    if len(mine) < len(current):
        rest = [i for i in current if i not in wanted]
        conn.execute('INSERT INTO claims (token, stream, lease, ids) VALUES (?, ?, ?, ?)',
                     (token, name, row[0], _json_ids(rest)))
    return mine


def claim(conn: sqlite3.Connection, name: str, ids: Iterable[Any], token: str, until: float,
          columns: str, disjoint: Sequence[str] = ()) -> list[Any]:
    """Claim the available, unclaimed messages among ``ids``; return their ``columns`` (the id first).

    ``disjoint``: tokens of claims known to hold none of ``ids``, left out of the
    check (it reads every claim of the stream otherwise).
    """
    rows: list[Any] = []
    others, params = claimed_ids_but(disjoint)
    for chunk in chunks(ids):
        rows += conn.execute(
            f"SELECT {columns} FROM buffer WHERE +stream = ? AND state = '{AVAILABLE}' AND id IN ({marks(chunk)})"
            f' AND id NOT IN ({others})', (name, *chunk, name, *params)).fetchall()
    if rows:
        hold(conn, name, token, until, [row[0] for row in rows])
    return rows


def claim_known(conn: sqlite3.Connection, name: str, messages: Sequence[Message], token: str,
                until: float, attempts: int) -> set[RecordId] | None:
    """Claim the still available, unclaimed ``messages``; return None if all were claimed, else the ids that were.

    Only messages whose ``attempts`` are still ``attempts`` (as the caller read
    them) are claimed: one that failed since keeps its place for the next read,
    so the caller's copies are never stale (the backoff of a retry is computed
    from them).
    """
    ids = [m.id for m in messages]
    free: list[int] = []
    for chunk in chunks(ids):
        free += [row[0] for row in conn.execute(
            f"SELECT id FROM buffer WHERE +stream = ? AND state = '{AVAILABLE}' AND attempts = ?"
            f' AND id IN ({marks(chunk)}) AND id NOT IN ({CLAIMED_IDS})', (name, attempts, *chunk, name))]
    if free:
        hold(conn, name, token, until, sorted(free))
    if len(free) == len(ids):
        return None  # the usual case
    return set(free)


def unclaim(conn: sqlite3.Connection, name: str, token: str | None, ids: Iterable[Any]) -> int:
    """Give ``ids`` held under ``token`` back, untouched (no attempt counted); return how many."""
    mine = let_go(conn, name, token, ids)
    in_place.materialise(conn, name, mine)  # held in place (a group stream): read again as copies
    return len(mine)


def renew(conn: sqlite3.Connection, name: str, token: str, until: float) -> int:
    row = conn.execute('UPDATE claims SET lease = ? WHERE token = ? AND stream = ? RETURNING json_array_length(ids)',
                       (until, token, name)).fetchone()
    return row[0] if row else 0


def commit(conn: sqlite3.Connection, name: str, token: str | None, ids: Sequence[RecordId], keep: bool) -> int:
    """Delete the messages still held under ``token`` (or mark them done, with ``keep``); return the count."""
    mine = let_go(conn, name, token, ids) if ids else []
    if not mine:
        return 0
    held_in_place = 0
    if in_place.is_group_stream(name):
        # a group stream's claim may hold messages of the stream in place: letting go of them commits them,
        # and only its copies are written (one look at the rows tells which is which)
        copies: list[int] = []
        for chunk in chunks(mine):
            for message_id, own in conn.execute(f'SELECT id, stream = ? FROM buffer WHERE id IN ({marks(chunk)})',
                                                (name, *chunk)):
                if own:
                    copies.append(message_id)
                else:
                    held_in_place += 1
        mine = copies
    if keep:
        sql = f"UPDATE buffer SET state = '{DONE}', processed = 1, claim = NULL, lease = NULL WHERE"
    else:
        sql = 'DELETE FROM buffer WHERE'
    return held_in_place + sum(conn.execute(f"{sql} +stream = ? AND state = '{AVAILABLE}' AND id IN ({marks(chunk)})",
                                            (name, *chunk)).rowcount for chunk in chunks(mine))


def release(conn: sqlite3.Connection, name: str, token: str, ids: Sequence[RecordId], error: str | None,
            max_attempts: int, backoff: float, now: float) -> tuple[int, int]:
    """Count a failed attempt: retry after ``backoff`` (at once if 0) or dead-letter; return (retried, dead)."""
    mine = let_go(conn, name, token, ids)
    copies = in_place.materialise(conn, name, mine)  # held in place: the attempt is counted on a copy
    mine = [copies.get(i, i) for i in mine]
    # SET expressions see the old row, so "attempts + 1" is the new attempt count throughout
    later = f"CASE WHEN ? > 0 THEN '{RETRY}' ELSE '{AVAILABLE}' END"
    new_state = f"CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE {later} END"
    sql = (f'UPDATE buffer SET attempts = attempts + 1, error = ?, claim = NULL, state = {new_state},'
           f' processed = CASE WHEN attempts + 1 < ? AND ? <= 0 THEN 0 ELSE 1 END,'
           f' lease = CASE WHEN attempts + 1 < ? AND ? > 0 THEN ? ELSE NULL END'
           f" WHERE +stream = ? AND state = '{AVAILABLE}' AND id IN ")
    states: list[Any] = []
    for chunk in chunks(mine):
        states += conn.execute(
            f'{sql} ({marks(chunk)}) RETURNING state',
            (error, max_attempts, backoff, max_attempts, backoff, max_attempts, backoff, now + backoff,
             name, *chunk)).fetchall()
    dead = sum(1 for (state,) in states if state == DEAD)
    return len(states) - dead, dead


def expire(conn: sqlite3.Connection, name: str, max_attempts: int, now: float) -> int:
    """Make expired claims (one attempt counted) and retries whose backoff is over available again.

    The unprocessed window records of the claims that expired go too (see :func:`drop_orphaned_windows`).
    """
    # the claims that lapsed: a read of the (small) claims table; when none did, that and one update are all
    lapsed = conn.execute('SELECT token, ids FROM claims WHERE stream = ? AND lease < ?', (name, now)).fetchall()
    expired = 0
    if lapsed:
        conn.execute('DELETE FROM claims WHERE stream = ? AND lease < ?', (name, now))
        ids = sorted(i for _, held_ids in lapsed for i in json.loads(held_ids))
        copies = in_place.materialise(conn, name, ids)  # held in place: the attempt is counted on a copy
        ids = sorted(copies.get(i, i) for i in ids)
        for chunk in chunks(ids):
            # an abandoned claim counts as a failed delivery
            expired += conn.execute(
                f"UPDATE buffer SET attempts = attempts + 1, error = 'lease expired', claim = NULL, lease = NULL,"
                f" state = CASE WHEN attempts + 1 >= ? THEN '{DEAD}' ELSE '{AVAILABLE}' END,"
                f" processed = CASE WHEN attempts + 1 >= ? THEN 1 ELSE 0 END"
                f" WHERE +stream = ? AND state = '{AVAILABLE}' AND id IN ({marks(chunk)})",
                (max_attempts, max_attempts, name, *chunk)).rowcount
    backed_off = conn.execute(
        f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, lease = NULL"
        f" WHERE stream = ? AND state = '{RETRY}' AND lease <= ?", (name, now)).rowcount
    if lapsed:
        drop_orphaned_windows(conn, name, [token for token, _ in lapsed])
    return expired + backed_off


def drop_orphaned_windows(conn: sqlite3.Connection, name: str, tokens: Sequence[str]) -> int:
    """Delete the unprocessed window records of the claims ``tokens`` that hold no message any more.

    Called when those claims' leases expired: their consumer died or hung, the
    messages go out again in a new window with a record of its own, and nobody
    will commit the old one. Returns the count.
    """
    removed = 0
    for start in range(0, len(tokens), CHUNK):
        chunk = tokens[start:start + CHUNK]
        removed += conn.execute(
            f'DELETE FROM windows WHERE stream = ? AND processed = 0 AND token IN ({marks(chunk)}) AND NOT EXISTS'
            ' (SELECT 1 FROM claims WHERE claims.stream = windows.stream AND claims.token = windows.token)',
            (name, *chunk)).rowcount
    return removed


def bury(conn: sqlite3.Connection, name: str, bad: Sequence[tuple[RecordId, str]], token: str | None = None) -> int:
    """Dead-letter the messages ``bad`` (``(id, why)``: data that cannot be decoded); return the count.

    ``token`` None: only those still available and unclaimed; else only those
    the claim ``token`` holds (they leave it).
    """
    sql = (f"UPDATE buffer SET state = '{DEAD}', processed = 1, error = ?, claim = NULL, lease = NULL"
           f" WHERE id = ? AND +stream = ? AND state = '{AVAILABLE}'")
    if token is None:
        sql += f' AND id NOT IN ({CLAIMED_IDS})'
        return sum(conn.execute(sql, (why, int(id_), name, name)).rowcount for id_, why in bad)
    mine = let_go(conn, name, token, [id_ for id_, _ in bad])
    copies = in_place.materialise(conn, name, mine)  # held in place: the dead letter is a copy
    return sum(conn.execute(sql, (why, copies.get(int(id_), int(id_)), name)).rowcount
               for id_, why in bad if int(id_) in set(mine))


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
