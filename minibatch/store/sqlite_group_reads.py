"""A named group's consumers read the stream itself: copies only for what fails (the embedded store).

The design of groups (:mod:`minibatch.store.base_groups`) gives a named group
``g`` of stream ``s`` a group stream ``s[g]`` of copies, and the group's
position: the id of ``s`` up to which it has taken messages. On SQLite ids
follow commit order exactly, so the position alone says which messages of
``s`` the group has not taken yet: those above it. Reading them *in place*
saves the copy of every message (a write per message and per group, then its
commit, then its removal):

* :func:`available` lists, besides ``s[g]``'s available copies, the messages of
  ``s`` above the position, as messages of ``s[g]`` (attempts 0);
* :func:`claim` takes such messages with the ordinary claim of ``s[g]`` (one
  row of ``claims`` holding their ids), and moves the position past them in the
  same transaction; messages of ``s`` it passes but does not take (another
  consumer's read ran ahead, a window took fewer) are copied into ``s[g]``,
  so none is skipped;
* a commit of such a claim removes its ``claims`` row and writes nothing else:
  the message was taken (below the position), is held by nobody, and has no
  uncommitted copy, which is what retention asks of a group;
* anything else that ends a claim (a failure, a lapsed lease, giving back,
  dead-lettering) first makes copies of the messages it held in place
  (:func:`materialise`), and then goes on as for any copy: retries, attempts
  and dead letters live in ``s[g]`` as before.

Retention leaves alone what a claim of a group stream holds in place
(:func:`held`). Every function runs inside the caller's transaction
(or read) on one connection.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from minibatch.store.base import DEAD, STATES
from minibatch.store.sqlite_values import loads

def held(streams: Sequence[str]) -> str:
    """SQL of the ids held by claims of ``streams`` (their names as parameters), for ``id NOT IN (...)``."""
    return ('SELECT j.value FROM claims AS c, json_each(c.ids) AS j'
            f" WHERE c.stream IN ({','.join('?' * len(streams))})")


def is_group_stream(name: str) -> bool:
    """Whether ``name`` is shaped like a group stream ``s[g]`` (only those may hold messages in place)."""
    return name.endswith(']') and '[' in name


def source_of(conn: sqlite3.Connection, name: str) -> tuple[str, str, int] | None:
    """``(stream, group, position)`` if ``name`` is the group stream of a registered named group, else None."""
    if not is_group_stream(name):
        return None
    cut = name.rindex('[')  # a group name holds no '[' (check_group)
    source, group = name[:cut], name[cut + 1:-1]
    row = conn.execute('SELECT json_extract(status, ?) FROM streams WHERE name = ?',
                       (f'$.groups."{group}"', source)).fetchone()
    entry = loads(row[0]) if row and row[0] else None
    if not isinstance(entry, dict):
        return None
    return source, group, int(entry.get('position') or 0)


def _fresh(per_state_filter: str, limited: bool = False) -> str:
    """Ids of the source above the position that a group takes, one index range per state, in id order.

    One range per state (see sqlite_groups.pull), read from the (stream, state, id)
    index alone but for dead letters: those appended dead (no attempt) are left out.
    Parameters per state: the source, the position, those of ``per_state_filter``,
    and with ``limited`` the number of ids to read of that state at most.
    """
    limit = ' ORDER BY id LIMIT ?' if limited else ''
    ranges = ' UNION ALL '.join(
        f"SELECT id FROM (SELECT id FROM buffer WHERE stream = ? AND state = '{state}' AND id > ?{per_state_filter}"
        + (' AND attempts != 0' if state == DEAD else '') + f'{limit})' for state in STATES)
    return f'SELECT id FROM ({ranges}) ORDER BY id'


def _params(source: str, position: int, *more: Any) -> list[Any]:
    """The parameters of :func:`_fresh`: the same for every state."""
    return [value for _ in STATES for value in (source, position, *more)]


def available(conn: sqlite3.Connection, name: str, limit: int | None, until: float | None,
              columns: str) -> list[Any]:
    """Rows (``columns`` of the source's messages) that group stream ``name`` may take in place; [] if none.

    Those above the group's position that no claim of ``name`` holds, oldest
    first, at most ``limit``, created before ``until`` (epoch) when given.
    """
    found = source_of(conn, name)
    if found is None:
        return []
    source, _, position = found
    extra, extra_params = ('', []) if until is None else (' AND created < ?', [until])
    # each state's range read up to the limit only: a read must not cost the length of the stream
    ids_sql = _fresh(extra, limited=limit is not None)
    ids_params = _params(source, position, *extra_params, *([int(limit)] if limit is not None else []))
    sql = (f'SELECT {columns} FROM buffer WHERE id IN ({ids_sql})'
           ' AND id NOT IN (SELECT j.value FROM claims AS c, json_each(c.ids) AS j WHERE c.stream = ?) ORDER BY id')
    params = [*ids_params, name]
    if limit is not None:
        sql += ' LIMIT ?'
        params.append(int(limit))
    return conn.execute(sql, params).fetchall()


def claim(conn: sqlite3.Connection, name: str, ids: Sequence[int]) -> list[int]:
    """Take the messages among ``ids`` that group stream ``name`` may still take in place; return their ids.

    Moves the group's position to the last one taken; the messages passed on
    the way and not taken are copied into ``name`` (available), so that none
    is skipped. The caller holds the returned ids under its claim.
    """
    found = source_of(conn, name) if ids else None
    if found is None:
        return []
    source, group, position = found
    wanted = {int(i) for i in ids if int(i) > position}
    if wanted and max(wanted) - position > 4 * len(wanted) + 1000:
        # far above the position: copies among them (one another consumer took, say) would stretch the
        # read below over the whole stream; keep the stream's own messages only (looked up by id)
        wanted = {row[0] for row in conn.execute(
            f"SELECT id FROM buffer WHERE +stream = ? AND id IN ({','.join('?' * len(wanted))})", (source, *wanted))}
    if not wanted:
        return []
    # every message the group has not taken up to the highest wanted: one read of the index, no row
    passed = [row[0] for row in conn.execute(_fresh(' AND id <= ?'), _params(source, position, max(wanted)))]
    taken = [i for i in passed if i in wanted]
    if not taken:
        return []
    last = taken[-1]
    # passed and not taken: copied, so the group still gets them (other consumers of it read them as copies)
    skipped = [i for i in passed if i < last and i not in wanted]
    if skipped:
        materialise(conn, name, skipped)
    conn.execute('UPDATE streams SET status = json_set(status, ?, ?) WHERE name = ?',
                 (f'$.groups."{group}".position', last, source))
    return taken


def materialise(conn: sqlite3.Connection, name: str, ids: Sequence[int]) -> dict[int, int]:
    """Copy into ``name`` those of ``ids`` that are messages of another stream (held in place); {id: copy id}.

    Called with the ids a claim of ``name`` gave up before anything is done to
    them (retried, expired, given back, dead-lettered): from then on they are
    copies like any other. Returns {} at once for a stream that is no group
    stream.
    """
    if not ids or not is_group_stream(name):
        return {}
    mapping: dict[int, int] = {}
    keys = [int(i) for i in ids]
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        rows = conn.execute(
            'INSERT INTO buffer (stream, created, data, origin) SELECT ?, created, data, id FROM buffer'
            f" WHERE id IN ({','.join('?' * len(chunk))}) AND stream != ? ORDER BY id RETURNING id, origin",
            (name, *chunk, name)).fetchall()
        mapping.update({origin: copy for copy, origin in rows})
    return mapping


def held_in_place(conn: sqlite3.Connection, group_stream: str) -> int:
    """How many messages of its stream the claims of ``group_stream`` hold in place (a read)."""
    return int(conn.execute(
        'SELECT count(*) FROM claims AS c, json_each(c.ids) AS j JOIN buffer AS b ON b.id = j.value'
        ' WHERE c.stream = ? AND b.stream != ?', (group_stream, group_stream)).fetchone()[0])
