"""The embedded store's inspection, housekeeping and consumer records: a part of :class:`SQLiteStore`.

A mixin: its methods read and write through the store's ``db``
(:class:`~minibatch.store.sqlite_connection.Database`), each one read or one
transaction. A claimed message is available in its row and held by a row of
``claims`` (:mod:`~minibatch.store.sqlite_messages`): the views here report it
as claimed and never age it out.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from minibatch.errors import InvalidMessage
from minibatch.store import sqlite_group_reads as in_place
from minibatch.store import sqlite_messages as lifecycle
from minibatch.store.base import AVAILABLE, CLAIMED, DONE, RETRY, STATES, Message, RecordId
from minibatch.store.sqlite_connection import Database
from minibatch.store.sqlite_values import MESSAGE_COLUMNS, dumps, loads, message_of, to_datetime

__all__ = ['SQLiteInspection']


class SQLiteInspection:
    """Messages in any state, counts, max_age housekeeping and consumer heartbeats of the SQLite store."""
    db: Database

    # -- inspection and housekeeping --------------------------------------
    def messages(self, name: str, state: str | None = None, limit: int | None = None) -> list[Message]:
        # a claimed message is available in its row and held by a claim (see sqlite_messages)
        params: list[Any] = [name]
        sql = f'SELECT {MESSAGE_COLUMNS} FROM buffer WHERE stream = ?'
        if state == CLAIMED:
            sql += f" AND state = '{AVAILABLE}' AND id IN ({lifecycle.CLAIMED_IDS})"
            params.append(name)
        elif state == AVAILABLE:
            sql += f" AND state = '{AVAILABLE}' AND id NOT IN ({lifecycle.CLAIMED_IDS})"
            params.append(name)
        elif state is not None:
            sql += ' AND state = ?'
            params.append(state)
        sql += ' ORDER BY id'
        if limit is not None:
            sql += ' LIMIT ?'
            params.append(int(limit))
        messages = [message_of(row) for row in self.db.read(sql, params)]
        if state is None or state == CLAIMED:
            claimed = self._claimed(name) if state is None else None
            for message in messages:
                if message.state == AVAILABLE and (claimed is None or message.id in claimed):
                    message.state = CLAIMED
        return messages

    def _claimed(self, name: str) -> set[RecordId]:
        return {row[0] for row in self.db.read(lifecycle.CLAIMED_IDS, (name,))}

    def counts(self, name: str) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(self.db.read('SELECT state, count(*) FROM buffer WHERE stream = ? GROUP BY state', (name,)))
        counts[CLAIMED] = self.db.read(f"SELECT count(*) FROM buffer WHERE stream = ? AND state = '{AVAILABLE}'"
                                     f' AND id IN ({lifecycle.CLAIMED_IDS})', (name, name))[0][0]
        counts[AVAILABLE] -= counts[CLAIMED]
        if in_place.is_group_stream(name):  # its claims may hold messages of its stream in place
            counts[CLAIMED] += in_place.held_in_place(self.db.conn(), name)
        counts['windows'] = self.db.read('SELECT count(*) FROM windows WHERE stream = ?', (name,))[0][0]
        expired = self.db.read("SELECT value FROM stream_counters WHERE stream = ? AND name = 'expired'", (name,))
        counts['expired'] = expired[0][0] if expired else 0
        return counts

    def housekeep(self, name: str, max_age: float) -> tuple[int, int]:
        cutoff = time.time() - max_age

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            expired = conn.execute(f"DELETE FROM buffer WHERE stream = ? AND state IN ('{AVAILABLE}', '{RETRY}')"
                                   f' AND created < ? AND id NOT IN ({lifecycle.CLAIMED_IDS})',
                                   (name, cutoff, name)).rowcount
            done = conn.execute(f"DELETE FROM buffer WHERE stream = ? AND state = '{DONE}' AND created < ?",
                                (name, cutoff)).rowcount
            windows = conn.execute('DELETE FROM windows WHERE stream = ? AND processed = 1 AND created < ?',
                                   (name, cutoff)).rowcount
            if expired:
                conn.execute("INSERT INTO stream_counters (stream, name, value) VALUES (?, 'expired', ?)"
                             ' ON CONFLICT (stream, name) DO UPDATE SET value = value + excluded.value',
                             (name, expired))
            return expired + done + windows, expired
        return self.db.write(work)

    # -- consumers --------------------------------------------------------
    def heartbeat(self, name: str, consumer: str, info: Mapping[str, Any]) -> None:
        try:
            info_json = dumps(dict(info))
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f'consumer info of {consumer!r} cannot be stored: {exc}') from exc
        self.db.write(lambda conn: conn.execute(
            'INSERT OR REPLACE INTO consumers (stream, id, seen, info) VALUES (?, ?, ?, ?)',
            (name, str(consumer), time.time(), info_json)))

    def consumers(self, name: str) -> list[dict[str, Any]]:
        rows = self.db.read('SELECT id, seen, info FROM consumers WHERE stream = ? ORDER BY id', (name,))
        return [{**loads(info), 'id': cid, 'seen': to_datetime(seen)} for cid, seen, info in rows]

    def forget_consumers(self, name: str, older_than: float) -> int:
        cutoff = time.time() - older_than
        return self.db.write(lambda conn: conn.execute(
            'DELETE FROM consumers WHERE stream = ? AND seen < ?', (name, cutoff)).rowcount)
