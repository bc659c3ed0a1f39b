"""What the dashboard shows, read from the store: the figures of every stream and of one stream.

Every count comes from :func:`minibatch.status.stream_stats` (the figures of
``stream.stats()``, ``minibatch status`` and ``/status``); this module adds
only what that function does not give: the age of the oldest waiting message,
the recent windows, the dead letters, and the chart history of
:mod:`minibatch.dashboard.history`. Everything here only reads, except
:func:`overview`, which may append one history sample per stream.

Values are plain JSON: datetimes as ISO 8601 strings in UTC, message ids as
SQLite's integers or the hex of MongoDB's ObjectIds (:func:`json_id`).
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from minibatch.dashboard.history import History
from minibatch.status import stream_stats
from minibatch.store.base import DEAD, RETRY, Message, Store, StreamInfo, utcnow

#: minibatch.status is untyped; its function returns a dict of plain values
_stream_stats: Callable[..., dict[str, Any]] = stream_stats

#: the keys of stream_stats the overview shows for every stream
OVERVIEW_KEYS = ('backlog', 'in_flight', 'processed', 'failed', 'dead', 'expired', 'rate', 'consumers_alive',
                 'windows')
#: the keys of a group's figures (stream_stats' ``groups``) the stream page shows
GROUP_KEYS = ('lag', 'lag_seconds', 'in_flight', 'dead', 'consumers_alive', 'rate', 'start', 'keep')
#: consumer report fields the stream page shows
CONSUMER_KEYS = ('id', 'host', 'pid', 'state', 'rate', 'in_flight', 'processed', 'failed', 'windows', 'alive')


def iso(moment: datetime.datetime | None) -> str | None:
    """A naive UTC datetime of the store as ISO 8601 with its UTC offset (None stays None)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.isoformat()


def json_id(record_id: Any) -> int | str:
    """A message id as JSON shows it: SQLite's integers stay integers, ObjectIds become hex strings."""
    return record_id if isinstance(record_id, int) else str(record_id)


def oldest_waiting(store: Store, name: str, counts: dict[str, int]) -> datetime.datetime | None:
    """When the oldest message waiting to be processed (available or due for a retry) was appended.

    At most two reads of one message each, and none when nothing waits. None when nothing waits.
    """
    found: list[Message] = []
    if counts.get('available'):
        found += store.find_available(name, limit=1)
    if counts.get('retry'):
        found += store.messages(name, state=RETRY, limit=1)
    return min((message.created for message in found), default=None)


def age_seconds(moment: datetime.datetime | None, now: datetime.datetime) -> float:
    """Seconds from ``moment`` to ``now`` (never negative); 0 for None."""
    return 0.0 if moment is None else max(0.0, round((now - moment).total_seconds(), 3))


def stream_figures(store: Store, name: str, now: datetime.datetime) -> dict[str, Any]:
    """``stream_stats`` of ``name`` plus ``oldest_age`` (seconds the oldest waiting message has waited)."""
    stats = _stream_stats(store, name, now=now)
    stats['oldest_age'] = age_seconds(oldest_waiting(store, name, stats), now)
    return stats


def overview(store: Store, history: History, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """One row per stream of the store, by name: its figures, ``oldest_age`` and chart ``history``.

    Appends a history sample to a stream whose last one is older than the
    history's interval (see :meth:`History.record`); otherwise read-only.
    """
    now = now or utcnow()
    rows = []
    for info in store.list_streams():
        stats = stream_figures(store, info.name, now)
        row: dict[str, Any] = {'name': info.name, 'oldest_age': stats['oldest_age'],
                               **{key: stats[key] for key in OVERVIEW_KEYS}}
        row['history'] = history.record(store, info, stats, now)
        rows.append(row)
    return rows


def consumer_row(record: dict[str, Any]) -> dict[str, Any]:
    """A consumer report as the stream page shows it (``seen`` and ``started`` as ISO strings)."""
    row = {key: record.get(key) for key in CONSUMER_KEYS}
    row['seen'] = iso(record.get('seen'))
    started = record.get('started')
    row['started'] = iso(started) if isinstance(started, datetime.datetime) else started
    return row


def letter_row(message: Message) -> dict[str, Any]:
    """A dead letter as the stream page shows it."""
    return {'id': json_id(message.id), 'created': iso(message.created), 'attempts': message.attempts,
            'error': message.error, 'data': message.data}


def recent_windows(store: Store, name: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` newest window records of ``name``, newest first: id, created, size, processed.

    ``size`` is the number of messages the record keeps, None when it keeps
    none (windows of ``keep=False`` consumers are recorded without their data).

    Reads every window record of the stream (the store contract has no
    newest-first limit), so callers cache it; see :class:`~minibatch.dashboard.server.Dashboard`.
    """
    records = store.windows(name)[-limit:] if limit > 0 else []
    return [{'id': json_id(w.id), 'created': iso(w.created), 'size': len(w.data) or None, 'processed': w.processed}
            for w in reversed(records)]


def group_rows(groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``groups`` figures of ``stream_stats`` as the stream page lists them: one row per group, by name."""
    return [{'group': name, **{key: figures.get(key) for key in GROUP_KEYS}}
            for name, figures in sorted(groups.items())]


def stream_detail(store: Store, info: StreamInfo, history: History, letters: int = 100,
                  now: datetime.datetime | None = None) -> dict[str, Any]:
    """The stream page's figures of ``info``'s stream: figures, consumer groups, consumers, dead letters (at most
    ``letters``), history.

    Read-only (the history is read as the overview last wrote it). Recent
    windows are not included: see :func:`recent_windows`.
    """
    now = now or utcnow()
    stats = stream_figures(store, info.name, now)
    figures = {key: stats[key] for key in OVERVIEW_KEYS + ('oldest_age', 'available', 'claimed', 'retry', 'done')}
    return {
        'name': info.name,
        'created': iso(info.created),
        'max_age': info.max_age,
        'figures': figures,
        'groups': group_rows(stats.get('groups') or {}),
        'consumers': [consumer_row(record) for record in stats['consumers']],
        'dead_letters': [letter_row(m) for m in store.messages(info.name, state=DEAD, limit=letters)],
        'history': history.samples(info, now),
    }


def match_dead_ids(store: Store, name: str, ids: list[Any]) -> tuple[list[Any], list[Any]]:
    """``(found, unknown)``: the store's ids of the dead letters of ``name`` named in ``ids``, and the rest.

    Ids are compared as text, so SQLite's integers and MongoDB's ObjectIds
    both come back from JSON without guessing their type. Read-only.
    """
    known = {str(m.id): m.id for m in store.dead_letters(name)}
    found: list[Any] = []
    unknown: list[Any] = []
    for item in dict.fromkeys(str(i) for i in ids):
        (found if item in known else unknown).append(known.get(item, item))
    return found, unknown
