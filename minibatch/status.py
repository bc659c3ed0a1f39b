"""The figures of a stream, computed in one place for ``stream.stats()``, the CLI and the app.

Two sources feed them: the store's message counts per state (exact, read
when asked), and the reports each running consumer writes every few seconds
(``WindowEmitter.HEARTBEAT``) with its counters and rate. Nothing here writes.
"""
import datetime

from minibatch.store import eventtime
from minibatch.store.base import DEFAULT_GROUP, group_stream, utcnow

#: a consumer counts as alive while its last report is younger than this many heartbeats
ALIVE_HEARTBEATS = 3
EPOCH = datetime.datetime(1970, 1, 1)


def stream_stats(store, name, now=None):
    """Return the figures of stream ``name`` as a dict of plain values.

    Keys:

    - ``available``, ``claimed``, ``retry``, ``done``, ``dead``, ``windows``:
      messages per state and window records, counted in the store now;
    - ``backlog``: messages waiting to be processed (available + retry);
    - ``in_flight``: messages claimed by a consumer right now;
    - ``processed``: messages committed, summed over the consumer reports
      the store holds (so it survives ``keep=False`` deleting them);
    - ``failed``: failed window attempts, summed the same way;
    - ``dead_lettered``: messages in the dead letters (same as ``dead``);
    - ``expired``: messages the stream's ``max_age`` removed before they
      were processed, in all (a running total kept by the store);
    - ``rate``: messages per second committed by the alive consumers, over
      their last report period;
    - ``consumers_alive``: consumers whose last report is recent and that did
      not report a stop;
    - ``consumers``: the reports, oldest consumer id first, each with ``alive``;
    - ``watermark``: of the stream's event-time consumers, the latest event time seen minus
      their grace (a naive UTC datetime), or None without event-time windows;
    - ``open_windows``: event-time (key, window) pairs not emitted yet;
    - ``late``: events counted late (behind the watermark or after their window was emitted),
      whatever ``on_late`` then did with them;
    - ``groups``: per consumer group registered on the stream (docs/groups.rst), a dict with
      ``lag`` (messages the group has not committed yet, dead letters aside), ``lag_seconds``
      (age of the oldest of them, 0.0 when none), ``in_flight``, ``dead`` (its dead letters),
      ``consumers_alive``, ``rate``, ``start`` and ``keep``; {} when the stream has no groups.

    Read-only; an unknown or empty stream gives zeros and no consumers.
    """
    now = now or utcnow()
    counts = store.counts(name)
    consumers = store.consumers(name)
    for record in consumers:
        record['alive'] = is_alive(record, now)
    alive = [record for record in consumers if record['alive']]
    windows = eventtime.figures(store, name)
    watermark = windows['watermark']
    return {
        **counts,
        'backlog': counts['available'] + counts['retry'],
        'in_flight': counts['claimed'],
        'processed': sum(int(record.get('processed') or 0) for record in consumers),
        'failed': sum(int(record.get('failed') or 0) for record in consumers),
        'dead_lettered': counts['dead'],
        'rate': round(sum(float(record.get('rate') or 0.0) for record in alive), 3),
        'consumers_alive': len(alive),
        'consumers': consumers,
        'watermark': None if watermark is None else EPOCH + datetime.timedelta(seconds=watermark),
        'open_windows': windows['open_windows'],
        'late': windows['late'],
        'groups': group_stats(store, name, now, counts, alive),
    }


def group_stats(store, name, now, counts, alive):
    """The ``groups`` figures of :func:`stream_stats`: one dict per group registered on ``name``."""
    figures = {}
    for group, entry in sorted(store.groups(name).items()):
        lag, oldest = store.group_lag(name, group)
        if group == DEFAULT_GROUP:
            own_counts, own_alive = counts, alive
        else:
            copies = group_stream(name, group)
            own_counts = store.counts(copies)
            own_alive = [record for record in store.consumers(copies) if is_alive(record, now)]
        figures[group] = {
            'lag': lag,
            'lag_seconds': round(max((now - oldest).total_seconds(), 0.0), 3) if oldest is not None else 0.0,
            'in_flight': own_counts['claimed'],
            'dead': own_counts['dead'],
            'consumers_alive': len(own_alive),
            'rate': round(sum(float(record.get('rate') or 0.0) for record in own_alive), 3),
            'start': entry.get('start'),
            'keep': bool(entry.get('keep')),
        }
    return figures


def is_alive(record, now=None):
    """True if the consumer ``record`` (from ``store.consumers()``) reported recently and did not stop."""
    if record.get('state') == 'stopped' or record.get('seen') is None:
        return False
    now = now or utcnow()
    period = float(record.get('heartbeat') or 5.0)
    return now - record['seen'] <= datetime.timedelta(seconds=ALIVE_HEARTBEATS * period)
