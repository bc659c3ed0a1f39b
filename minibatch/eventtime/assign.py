"""Which windows an event belongs to, and whether it is late: pure functions, no store, no clock.

The store's index step reads the watermark and the window rows near a batch
of events and calls :func:`decide` inside its transaction (SQLite) or between
its round trips (MongoDB); it writes back what :func:`decide` says. Keeping the
rules here, free of I/O, lets one reference implementation in plain Python
(the property test) check them.

Times are UTC epoch seconds. A window is ``[start, end)``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable

from minibatch.eventtime.spec import Count, Hopping, Session, Tumbling, WindowSpec

#: a session event belongs to whichever session holds it: its ``first`` is below every start
BEFORE_ALL = -1e300
#: a window row waits for its end (OPEN), is being emitted (TAKEN), or was emitted (DONE)
OPEN, TAKEN, DONE = 0, 1, 2

Window = tuple[float, float]
RowKey = tuple[str, float, float]  # (key, start, end)


def windows_of(spec: WindowSpec, t: float) -> list[Window]:
    """The windows of a tumbling or hopping ``spec`` that contain event time ``t``, oldest first."""
    if isinstance(spec, Tumbling):
        start = math.floor(t / spec.size) * spec.size
        return [(start, start + spec.size)]
    if isinstance(spec, Count):
        start = t - t % spec.size
        return [(start, start + spec.size)]
    if isinstance(spec, Hopping):
        first, last = math.floor((t - spec.size) / spec.step), math.floor(t / spec.step)
        found = []
        for k in range(first, last + 2):
            start = k * spec.step
            if start <= t < start + spec.size:
                found.append((start, start + spec.size))
        return found
    raise TypeError(f'windows_of() is for tumbling and hopping windows, not {spec!r}')


def span(spec: WindowSpec) -> float:
    """How far from an event time the windows it touches may reach (size; a session's gap)."""
    return float(spec.gap if isinstance(spec, Session) else spec.size)


def assign_counts(size: int, events: list[Event], next_of: dict[str, int]) -> dict[RowKey, int]:
    """Number the events of each key in arrival order from ``next_of[key]`` (updated in place).

    Each event's ``t`` becomes its number, its window ``[k*size, (k+1)*size)`` of numbers. Returns the
    events added per window row: a row is ready once ``size`` events were added to it.
    """
    added: dict[RowKey, int] = {}
    for event in events:
        seq = next_of.get(event.key, 0)
        next_of[event.key] = seq + 1
        start = float(seq - seq % size)
        event.t = float(seq)
        event.first = start
        row = (event.key, start, start + size)
        added[row] = added.get(row, 0) + 1
    return added


@dataclasses.dataclass
class Event:
    """One message to index: its id, key (JSON text) and event time.

    ``first``, set by :func:`decide` for an event on time: the start of the first window it belongs to
    (a hopping event is not added to its windows that were already closed; contents queries ask
    ``first <= start``).
    """
    id: object
    key: str
    t: float
    first: float | None = None


@dataclasses.dataclass
class Decision:
    """What an index step writes: events on time and late, window rows to add and remove, the new max."""
    on_time: list[Event] = dataclasses.field(default_factory=list)
    #: (event, the window it missed: the latest one for a hopping event that missed all of its windows)
    late: list[tuple[Event, Window]] = dataclasses.field(default_factory=list)
    new_rows: set[RowKey] = dataclasses.field(default_factory=set)
    removed_rows: set[RowKey] = dataclasses.field(default_factory=set)
    max_t: float | None = None


def decide(spec: WindowSpec, grace: float, events: Iterable[Event], max_t: float | None,
           rows: dict[RowKey, int]) -> Decision:
    """Assign ``events`` (in arrival order) to windows, given the latest event time and the rows near them.

    An event is late when every window it belongs to is closed: emitted or being emitted (row
    TAKEN or DONE), or ended at or before the watermark (latest event time seen before it, minus
    ``grace``). A session event is late when the session it would join is closed, or when a new
    session of its own would already be closed. ``rows`` maps (key, start, end) to the row state;
    it is updated in place with the decision.
    """
    decision = Decision(max_t=max_t)
    tumbling = spec.size if isinstance(spec, Tumbling) else None
    for event in events:
        watermark = None if decision.max_t is None else decision.max_t - grace
        if tumbling is not None:  # windows_of and _closed written out: the common case, once per event
            start = math.floor(event.t / tumbling) * tumbling
            row = (event.key, start, start + tumbling)
            if (watermark is not None and row[2] <= watermark) or rows.get(row, OPEN) != OPEN:
                decision.late.append((event, (start, row[2])))
            else:
                event.first = start
                decision.on_time.append(event)
                if row not in rows:
                    rows[row] = OPEN
                    decision.new_rows.add(row)
        elif isinstance(spec, Session):
            _session(spec, event, functools.partial(_closed, watermark, rows), rows, decision)
        else:
            closed = functools.partial(_closed, watermark, rows)
            windows = windows_of(spec, event.t)
            open_ = [w for w in windows if not closed((event.key, *w))]
            if not open_:
                decision.late.append((event, windows[-1]))
            else:
                event.first = open_[0][0]
                decision.on_time.append(event)
                for w in open_:
                    row = (event.key, *w)
                    if row not in rows:
                        rows[row] = OPEN
                        decision.new_rows.add(row)
        if decision.max_t is None or event.t > decision.max_t:
            decision.max_t = event.t
    return decision


def _closed(watermark: float | None, rows: dict[RowKey, int], row: RowKey) -> bool:
    """A window is closed once the watermark reached its end, or once it is taken or done."""
    return (watermark is not None and row[2] <= watermark) or rows.get(row, OPEN) != OPEN


def _session(spec: Session, event: Event, closed: Callable[[RowKey], bool], rows: dict[RowKey, int], decision: Decision) -> None:
    t, gap = event.t, spec.gap
    # a session [s, e) (e = its last event + gap) takes the event when their spans overlap
    touching = [row for row in rows if row[0] == event.key and row[1] < t + gap and t < row[2]]
    shut = [row for row in touching if closed(row)]
    if shut:
        decision.late.append((event, (shut[0][1], shut[0][2])))
        return
    merged = (event.key, min([t] + [r[1] for r in touching]), max([t + gap] + [r[2] for r in touching]))
    if not touching and closed(merged):
        decision.late.append((event, (merged[1], merged[2])))
        return
    event.first = BEFORE_ALL
    decision.on_time.append(event)
    if merged in touching:
        return  # inside a session that already reaches this far
    for row in touching:
        del rows[row]
        if row in decision.new_rows:
            decision.new_rows.discard(row)
        else:
            decision.removed_rows.add(row)
    rows[merged] = OPEN
    decision.new_rows.add(merged)
    decision.removed_rows.discard(merged)
