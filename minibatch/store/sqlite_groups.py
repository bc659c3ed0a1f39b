"""The embedded store's consumer groups: the SQL that registers, pulls, replays and retains.

The design is :mod:`minibatch.store.base_groups`'. Each function runs inside a
write transaction its caller opened (or a read), on one connection. SQLite
hands out ids under the write lock, so ids follow commit order exactly: a
group's ``position`` (the id of the last message it copied) never passes a
message that becomes visible later, and a pull copies every message once.

Scans of a stream's messages by id go through the (stream, state, id) index, one
range per state: a walk of the primary key from a group's position would pass
every copy made since (copies get the highest ids).
"""
from __future__ import annotations

import datetime
import sqlite3
from typing import Any

from minibatch.errors import ConfigurationError
from minibatch.store import sqlite_group_reads as in_place
from minibatch.store.base import AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, RecordId
from minibatch.store.base_groups import DEFAULT_GROUP, STARTS, check_group, group_stream
from minibatch.store.sqlite_values import dumps, loads, to_datetime, to_epoch
from minibatch.store.sqlite_messages import CLAIMED_IDS

#: messages appended dead (``append_dead``) or dead-lettered unread: no group gets a copy
APPENDED_DEAD = f"(state = '{DEAD}' AND attempts = 0)"
#: every state, for queries of a stream's messages by id that should use the (stream, state, id) index
EVERY_STATE = '(' + ', '.join(f"'{state}'" for state in STATES) + ')'
#: the states of a message (or copy) its group has not committed yet
UNCOMMITTED = f"('{AVAILABLE}', '{CLAIMED}', '{RETRY}')"


def _path(group: str, *keys: str) -> str:
    return '$.groups.' + '.'.join(f'"{key}"' for key in (group, *keys))


def registry(conn: sqlite3.Connection, name: str) -> dict[str, dict[str, Any]]:
    """The groups of stream ``name`` (see base_groups); {} when none or no such stream."""
    row = conn.execute("SELECT json_extract(status, '$.groups') FROM streams WHERE name = ?", (name,)).fetchone()
    found = loads(row[0]) if row and row[0] else {}
    return found if isinstance(found, dict) else {}


def register(conn: sqlite3.Connection, name: str, group: str, start: str, keep: bool, now: float) -> bool:
    """Create the entry of ``group`` unless it exists (then only record ``keep`` True); True if created."""
    check_group(group)
    if start not in STARTS:
        raise ConfigurationError(f'start must be one of {", ".join(STARTS)}, got {start!r}')
    conn.execute("INSERT OR IGNORE INTO streams (name, created, last_read, status) VALUES (?, ?, ?, '{}')",
                 (name, now, now))
    existing = registry(conn, name).get(group)
    if existing is not None:
        if keep and not existing.get('keep'):
            conn.execute('UPDATE streams SET status = json_set(status, ?, json(?)) WHERE name = ?',
                         (_path(group, 'keep'), 'true', name))
        return False
    position = None
    if group != DEFAULT_GROUP and start == 'latest':
        position = conn.execute('SELECT coalesce(max(id), 0) FROM buffer WHERE stream = ?', (name,)).fetchone()[0]
    if group != DEFAULT_GROUP:  # its copies are a stream of their own: status, the dashboard and /metrics list it
        conn.execute("INSERT OR IGNORE INTO streams (name, created, last_read, status) VALUES (?, ?, ?, '{}')",
                     (group_stream(name, group), now, now))
    entry = {'created': to_datetime(now), 'start': start, 'keep': bool(keep), 'position': position}
    conn.execute('UPDATE streams SET status = json_set(status, ?, json(?)) WHERE name = ?',
                 (_path(group), dumps(entry), name))
    return True


def take_turn(conn: sqlite3.Connection, name: str, job: str, seconds: float, now: float) -> bool:
    """True (and ``job``'s time set to ``now``) if nobody took ``job`` on ``name`` in the last ``seconds``."""
    path = f'$.turns."{job}"'
    return conn.execute('UPDATE streams SET status = json_set(status, ?, ?) WHERE name = ?'
                        ' AND coalesce(json_extract(status, ?), 0) <= ?',
                        (path, now, name, path, now - seconds)).rowcount == 1


def has_named(conn: sqlite3.Connection, name: str) -> bool:
    """Whether stream ``name`` has a named group registered (in the caller's transaction: exact)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM streams, json_each(streams.status, '$.groups')"
                        f" WHERE streams.name = ? AND json_each.key != '{DEFAULT_GROUP}')", (name,)).fetchone()[0] == 1


def has_new(conn: sqlite3.Connection, name: str, group: str) -> bool:
    """Whether ``name`` has a message after ``group``'s position (a read; False for an unknown group)."""
    entry = registry(conn, name).get(group)
    if entry is None or group == DEFAULT_GROUP:
        return False
    return conn.execute(f'SELECT 1 FROM buffer WHERE stream = ? AND state IN {EVERY_STATE} AND id > ? LIMIT 1',
                        (name, entry.get('position') or 0)).fetchone() is not None


def pull(conn: sqlite3.Connection, name: str, group: str, limit: int) -> int:
    """Copy up to ``limit`` messages after ``group``'s position into its group stream; move the position."""
    entry = registry(conn, name).get(group)
    if entry is None or group == DEFAULT_GROUP:
        return 0
    position = entry.get('position') or 0
    # the limit-th next id: of each state's next ids in index order (a walk of ids from the position would
    # pass every copy made since, whose ids are higher), the lowest limit
    per_state = ' UNION ALL '.join(
        f"SELECT id FROM (SELECT id FROM buffer WHERE stream = ? AND state = '{state}' AND id > ? ORDER BY id LIMIT ?)"
        for state in STATES)
    last = conn.execute(f'SELECT max(id) FROM (SELECT id FROM ({per_state}) ORDER BY id LIMIT ?)',
                        (*(name, position, int(limit)) * len(STATES), int(limit))).fetchone()[0]
    if last is None:
        return 0
    copied = conn.execute(
        'INSERT INTO buffer (stream, created, data, origin) SELECT ?, created, data, id FROM buffer'
        f' WHERE stream = ? AND state IN {EVERY_STATE} AND id > ? AND id <= ? AND NOT {APPENDED_DEAD} ORDER BY id',
        (group_stream(name, group), name, position, last)).rowcount
    conn.execute('UPDATE streams SET status = json_set(status, ?, ?) WHERE name = ?',
                 (_path(group, 'position'), last, name))
    return copied


def delete_group(conn: sqlite3.Connection, name: str, group: str) -> bool:
    """Remove ``group``'s entry and its group stream's records; False if it was not registered."""
    if group not in registry(conn, name):
        return False
    conn.execute('UPDATE streams SET status = json_remove(status, ?) WHERE name = ?', (_path(group), name))
    if group != DEFAULT_GROUP:
        copies = group_stream(name, group)
        for table, column in (('buffer', 'stream'), ('windows', 'stream'), ('consumers', 'stream'),
                              ('stream_counters', 'stream'), ('claims', 'stream'), ('streams', 'name')):
            conn.execute(f'DELETE FROM {table} WHERE {column} = ?', (copies,))
    return True


def _first_from(conn: sqlite3.Connection, name: str, since: datetime.datetime | RecordId | None) -> int | None:
    """The id of the first retained message of ``name`` from ``since`` on (see replay); None if there is none."""
    params: tuple[Any, ...]
    if since is None:
        sql, params = 'SELECT min(id) FROM buffer WHERE stream = ?', (name,)
    elif isinstance(since, datetime.datetime):
        # half a microsecond of tolerance: a created time read back as a datetime is rounded to the microsecond
        sql, params = 'SELECT min(id) FROM buffer WHERE stream = ? AND created >= ?', (name, (to_epoch(since) or 0.0) - 5e-7)
    else:
        try:
            first = int(since)
        except (TypeError, ValueError):
            raise ConfigurationError(f'since must be a datetime or a message id of the stream, got {since!r}') from None
        sql, params = f'SELECT min(id) FROM buffer WHERE stream = ? AND state IN {EVERY_STATE} AND id >= ?', (name, first)
    return conn.execute(sql, params).fetchone()[0]


def replay(conn: sqlite3.Connection, name: str, group: str, since: datetime.datetime | RecordId | None) -> int:
    """Make ``group`` see the retained messages of ``name`` from ``since`` on again; return how many."""
    groups = registry(conn, name)
    if group != DEFAULT_GROUP and group not in groups:
        raise ConfigurationError(f'stream {name!r} has no group {group!r} (its groups: {", ".join(groups) or "none"})')
    first = _first_from(conn, name, since)
    if first is None:
        return 0
    if group == DEFAULT_GROUP:
        return conn.execute(
            f"UPDATE buffer SET state = '{AVAILABLE}', processed = 0, attempts = 0, error = NULL, claim = NULL,"
            f" lease = NULL WHERE stream = ? AND state = '{DONE}' AND id >= ?", (name, first)).rowcount
    conn.execute('DELETE FROM buffer WHERE stream = ? AND origin >= ?', (group_stream(name, group), first))
    position = groups[group].get('position') or 0
    if position >= first:
        conn.execute('UPDATE streams SET status = json_set(status, ?, ?) WHERE name = ?',
                     (_path(group, 'position'), first - 1, name))
    return conn.execute(f'SELECT count(*) FROM buffer WHERE stream = ? AND state IN {EVERY_STATE} AND id >= ?'
                        f' AND NOT {APPENDED_DEAD}', (name, first)).fetchone()[0]


def retain(conn: sqlite3.Connection, name: str) -> int:
    """Remove the messages of ``name`` every registered group committed, and the copies of removed ones."""
    groups = registry(conn, name)
    if not groups or any(entry.get('keep') for entry in groups.values()):
        return 0
    named = [group_stream(name, g) for g in groups if g != DEFAULT_GROUP]
    # named groups only: every message but dead letters and claimed ones (those are the copies' business)
    conditions: list[str] = [f"state != '{DEAD}' AND id NOT IN ({CLAIMED_IDS})"]
    params: list[Any] = [name, name]
    if DEFAULT_GROUP in groups:
        conditions, params = [f"state = '{DONE}'"], [name]
    if named:
        floor = min(entry.get('position') or 0 for g, entry in groups.items() if g != DEFAULT_GROUP)
        conditions.append('id <= ?')
        params.append(floor)
        conditions.append(f'NOT EXISTS (SELECT 1 FROM buffer AS copy WHERE copy.origin = buffer.id'
                          f' AND copy.state IN {UNCOMMITTED})')
        # taken in place by a claim of a group that has not ended yet (see sqlite_group_reads)
        conditions.append(f'id NOT IN ({in_place.held(named)})')
        params += named
    removed = conn.execute(f'DELETE FROM buffer WHERE stream = ? AND {" AND ".join(conditions)}', params).rowcount
    for copies in named:
        conn.execute(f"DELETE FROM buffer WHERE stream = ? AND state = '{DONE}' AND NOT EXISTS"
                     ' (SELECT 1 FROM buffer AS original WHERE original.id = buffer.origin)', (copies,))
    return removed


def lag(conn: sqlite3.Connection, name: str, group: str) -> tuple[int, float | None]:
    """(messages ``group`` has not committed, ``created`` epoch of the oldest, or None)."""
    if group == DEFAULT_GROUP:
        count, oldest = conn.execute(f'SELECT count(*), min(created) FROM buffer WHERE stream = ? AND state IN'
                                     f' {UNCOMMITTED}', (name,)).fetchone()
        return count, oldest
    entry = registry(conn, name).get(group)
    if entry is None:
        return 0, None
    fresh, fresh_oldest = conn.execute(
        f'SELECT count(*), min(created) FROM buffer WHERE stream = ? AND state IN {EVERY_STATE} AND id > ?'
        f' AND NOT {APPENDED_DEAD}', (name, entry.get('position') or 0)).fetchone()
    waiting, waiting_oldest = conn.execute(
        f'SELECT count(*), min(created) FROM buffer WHERE stream = ? AND state IN {UNCOMMITTED}',
        (group_stream(name, group),)).fetchone()
    held = in_place.held_in_place(conn, group_stream(name, group))
    oldest = [t for t in (fresh_oldest, waiting_oldest) if t is not None]
    return fresh + waiting + held, min(oldest) if oldest else None
