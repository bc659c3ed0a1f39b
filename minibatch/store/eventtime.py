"""The state of event-time windows in the store: the contract, and the implementation for a store.

Event-time consumers (:mod:`minibatch.eventtime`) keep everything they know in
the store, so that any consumer on any machine carries on after a crash:

* per consumer *spec* (stream + window + key/time + grace, see
  ``EventTimeSpec.spec_id``): the latest event time seen (the watermark plus
  grace), and the number of late events;
* per message: its key and event time once indexed (and, when late, the
  window it missed). The message itself stays in the buffer: the messages are
  the window contents, claimed per (key, window) with the normal ``claim``;
* per (key, window): a row that is OPEN until the window is taken for
  emission (TAKEN, with a due time after which another consumer may take it
  over), then DONE.

Times are UTC epoch seconds (floats). :func:`state_for` picks the
implementation by store type and imports it lazily, as the stores themselves.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable, Iterable, Sequence

from minibatch.store.base import AVAILABLE, Message, RecordId, Store

#: window row states (see minibatch.eventtime.assign)
OPEN, TAKEN, DONE = 0, 1, 2
#: a window found with messages held elsewhere is looked at again after at most this many seconds
BUSY_POLL = 1.0
#: due of a count window row until it is full (never ready), and once full (ready at once)
NOT_YET, NOW = 1e300, -1e300

#: store class module -> the module implementing EventTimeState for it
IMPLEMENTATIONS = {
    'minibatch.store.sqlite': 'minibatch.store.eventtime_sqlite',
    'minibatch.store.mongodb': 'minibatch.store.eventtime_mongodb',
    'minibatch.store.mongodb_connection': 'minibatch.store.eventtime_mongodb',
}


@dataclasses.dataclass(frozen=True)
class Row:
    """A (key, window) of a spec: ``key`` as JSON text, ``[start, end)``, its state and due time."""
    key: str
    start: float
    end: float
    state: int = OPEN
    due: float = 0.0

    @property
    def key_window(self) -> tuple[str, float, float]:
        """(key, start, end): the row's identity, whatever its state and due time."""
        return self.key, self.start, self.end


@dataclasses.dataclass(slots=True)  # not frozen: made for every event of every window closed, at half the cost
class Indexed:
    """An event as the index holds it: message id, key, event time, its state in the buffer and lease end."""
    id: RecordId
    key: str
    t: float
    state: str
    lease: float | None = None
    window: tuple[float, float] | None = None  # the window a late event missed
    first: float | None = None  # an on-time event: the start of the first window it belongs to


@dataclasses.dataclass
class Closing:
    """What :meth:`EventTimeState.close` did with a ready row.

    ``outcome``: ``'claimed'`` (``messages`` are held under the token, ``items`` are the row's
    events), ``'lost'`` (another consumer took the row first), ``'empty'`` (nothing left to
    emit: marked done), ``'busy'`` (some of its messages are held or wait for a retry: due
    again later). ``ordered``: ``messages`` are in the window's order already (event time,
    then id), and need no sorting.
    """
    outcome: str
    messages: list[Message] = dataclasses.field(default_factory=list)
    items: list[Indexed] = dataclasses.field(default_factory=list)
    ordered: bool = False


@dataclasses.dataclass(frozen=True)
class Commit:
    """The arguments of one :meth:`EventTimeState.commit`, for :meth:`EventTimeState.commit_many`."""
    row: Row
    token: str
    done: Sequence[RecordId]
    back: Sequence[RecordId]
    keep: bool
    window_id: RecordId | None
    data: list[Any] | None


#: ``read(data) -> (key as JSON text, event time) or None`` (minibatch.eventtime.extract.plain_reader)
PlainRead = Callable[[Any], 'tuple[str, float] | None']
#: ``decide(events, max_t, rows) -> Decision`` (minibatch.eventtime.assign.decide with the spec bound)
Decide = Callable[[list[Any], 'float | None', dict[tuple[str, float, float], int]], Any]


class EventTimeState(abc.ABC):
    """The window state of one spec of one stream, in one store.

    Every method is one read, or one transaction (SQLite) / a few idempotent writes (MongoDB).
    """

    def __init__(self, store: Store, stream: str, spec: str, describe: str = '', grace: float = 0.0,
                 span: float = 0.0, counting: bool = False, sessions: bool = False) -> None:
        self.store, self.stream, self.spec = store, stream, spec
        self.describe, self.grace, self.span = describe, grace, span
        #: count windows per key: rows are removed when done (nothing is ever late for them)
        self.counting = counting
        #: two index steps must not index the same messages: count windows number them, sessions merge
        #: rows (tumbling and hopping windows need not: indexing them twice gives the same rows)
        self.exclusive = counting or sessions

    @abc.abstractmethod
    def unindexed(self, limit: int) -> list[Message]:
        """Available messages of the stream not yet indexed for the spec, oldest first, at most ``limit``."""

    def unindexed_fields(self, limit: int, read: PlainRead) -> list[Message | tuple[RecordId, str, float]]:
        """As :meth:`unindexed`, with each message's data given to ``read`` first.

        ``read(data)`` returns ``(key, time)`` (:func:`~minibatch.eventtime.extract.plain_reader`),
        or None for a message it leaves to the caller's full readers. A message it read comes
        as ``(id, key, time)``, any other as a :class:`Message`; arrival order, at most
        ``limit`` items. A store may skip making the Messages that are not needed.
        """
        items: list[Message | tuple[RecordId, str, float]] = []
        for message in self.unindexed(limit):
            fields = read(message.data)
            items.append(message if fields is None else (message.id, *fields))
        return items

    @abc.abstractmethod
    def index(self, events: Sequence[Any], skipped: Sequence[RecordId], decide: Decide) -> Any:
        """Record ``events`` (assign.Event) as ``decide`` assigns them; ``skipped`` ids count as indexed.

        Reads the spec's latest event time and the rows of the events' keys near their
        times, calls ``decide`` and writes its Decision: events with their late flag,
        rows added (OPEN) and removed (OPEN sessions merged), the new latest time, the
        late count. Idempotent: an event indexed already (by another consumer) is left
        out. Returns the Decision (for the events this call indexed).
        """

    @abc.abstractmethod
    def index_counted(self, events: Sequence[Any], skipped: Sequence[RecordId], size: int,
                      assign: Callable[[int, list[Any], dict[str, int]], dict[tuple[str, float, float], int]]) -> int:
        """Count windows per key: number ``events`` per key in arrival order and record them.

        ``assign(size, events, next_of)`` (minibatch.eventtime.assign.assign_counts) numbers the
        events from the key's next number (read from, and written back to, the store) and says
        how many events each row gets. A row becomes ready once all ``size`` of its events are
        recorded. Each message is numbered exactly once, also with competing consumers (SQLite:
        one transaction; MongoDB: the batch is claimed while it is numbered, and the numbers are
        reserved with one atomic ``$inc``). Returns the number of events indexed by this call.
        """

    @abc.abstractmethod
    def max_time(self) -> float | None:
        """The latest event time indexed for the spec, or None. Read-only."""

    @abc.abstractmethod
    def ready(self, until: float, now: float, limit: int) -> list[Row]:
        """Rows to emit: OPEN ones that end at or before ``until``, TAKEN ones due at or before ``now``.

        Earliest first, at most ``limit``. Read-only.
        """

    @abc.abstractmethod
    def take(self, row: Row, due: float) -> bool:
        """Mark ``row`` TAKEN until ``due``, if it is still as read (compare-and-set). True if we got it."""

    @abc.abstractmethod
    def contents(self, row: Row) -> list[Indexed]:
        """The on-time events of ``row``'s key in ``[start, end)`` whose messages are still in the stream.

        Only events whose ``first`` window starts at or before the row's start (a hopping event is not
        in the windows that had closed when it came), and only messages available, claimed or retrying
        (not dead, not committed). Read-only.
        """

    @abc.abstractmethod
    def reschedule(self, row: Row, due: float) -> None:
        """Keep ``row`` TAKEN, due again (for a takeover) at ``due``."""

    @abc.abstractmethod
    def reopen(self, rows: Iterable[Row]) -> None:
        """Make TAKEN ``rows`` due now (a consumer gave its windows back when stopping)."""

    @abc.abstractmethod
    def done(self, row: Row, ids: Sequence[RecordId], sweep: bool = False) -> None:
        """Mark ``row`` DONE and forget the index entries of ``ids`` (its committed messages).

        ``sweep``: also forget the row's entries whose messages left the stream otherwise (dead
        letters, or committed just before a crash), so that a dead letter requeued later is
        indexed again, as a late event. Removes (now and then) DONE rows the watermark has
        passed by more than the span: an event for them is late by the watermark alone.
        """

    def close(self, row: Row, now: float, lease: float, token: str, disjoint: Sequence[str] = ()) -> Closing:
        """Take ``row`` (compare-and-set) and claim all its messages under ``token``, or none of them.

        ``disjoint``: tokens of claims known to hold none of the row's messages
        (this consumer's tumbling or count windows of the spec awaiting their commit);
        a store may leave them out of its checks.

        The default takes, reads the contents and claims with ``store.claim`` (a racing consumer
        that claimed some first makes it give them back); a store with transactions does it all
        in one.
        """
        if not self.take(row, now + lease):
            return Closing('lost')
        items = self.contents(row)
        if not items:  # all committed (a crash after the commit) or dead-lettered: nothing to emit
            self.done(row, [], sweep=True)
            return Closing('empty')
        busy = [item.lease or now for item in items if item.state != AVAILABLE]
        if busy:  # held by an overlapping window or an index step, or waiting for a retry
            self.reschedule(row, busy_until(busy, now))
            return Closing('busy')
        claimed = self.store.claim(self.stream, [item.id for item in items], token, lease)
        if len(claimed) < len(items):  # a racing consumer got some: give ours back, try again shortly
            if claimed:
                self.store.unclaim(self.stream, token, [m.id for m in claimed])
            self.reschedule(row, now + 0.2)
            return Closing('busy')
        return Closing('claimed', claimed, items)

    def commit(self, row: Row, token: str, done: Sequence[RecordId], back: Sequence[RecordId], keep: bool,
               window_id: RecordId | None, data: list[Any] | None) -> tuple[int, RecordId]:
        """Commit a row's window: ``done`` ids committed (``keep``: kept as done), ``back`` given back,
        the window record written (``window_id`` None; with ``data`` when given) or marked processed,
        the row marked DONE (:meth:`done`). Returns ``(committed, window_id)``.

        The default is the store's ``commit_window`` / ``commit``, ``unclaim`` and :meth:`done`; a store
        with transactions does it in one.
        """
        if window_id is None:
            count, window_id = self.store.commit_window(self.stream, token, done, keep=keep, data=data)
        else:
            count = self.store.commit(self.stream, token, done, keep=keep, window_id=window_id)
        if back:
            self.store.unclaim(self.stream, token, back)
        self.done(row, done)
        return count, window_id

    def commit_many(self, commits: Sequence[Commit]) -> list[tuple[int, RecordId]]:
        """Commit several rows' windows, each as :meth:`commit` does; their ``(committed, window_id)`` in order.

        For windows that share no message (tumbling and count windows). The
        default commits one after another; a store with transactions does all in
        one, so that pages their messages share are written once.
        """
        return [self.commit(c.row, c.token, c.done, c.back, c.keep, c.window_id, c.data) for c in commits]

    @abc.abstractmethod
    def rows(self, key: str, lo: float, hi: float) -> dict[tuple[float, float], int]:
        """State of the rows of ``key`` that overlap ``[lo, hi)``, by (start, end). Read-only."""

    @abc.abstractmethod
    def late(self, limit: int) -> list[Indexed]:
        """Late events whose messages are available, at most ``limit``, oldest first. Read-only."""

    @abc.abstractmethod
    def forget(self, ids: Sequence[RecordId]) -> None:
        """Drop the index entries of ``ids`` (their messages were committed or dead-lettered as late)."""

    @abc.abstractmethod
    def next_due(self, clock_lag: float | None) -> float | None:
        """The earliest time a row becomes ready by the clock: an OPEN row's end + ``clock_lag`` (None: not
        by the clock), or a TAKEN row's due. None when there is no row. Read-only."""


def busy_until(leases: list[float], now: float) -> float:
    """When to look again at a window some of whose messages are held: when their lease ends, within BUSY_POLL s."""
    return min(max(leases + [now + 0.1]), now + BUSY_POLL)


def figures(store: Store, stream: str) -> dict[str, Any]:
    """``watermark`` (epoch seconds or None), ``open_windows`` and ``late`` of ``stream``, over its specs."""
    module = _implementation(store)
    if module is None:
        return {'watermark': None, 'open_windows': 0, 'late': 0}
    result: dict[str, Any] = module.figures(store, stream)
    return result


def forget_stream(store: Store, stream: str) -> None:
    """Remove the event-time state of ``stream`` (for ``delete_stream`` and ``clear``)."""
    module = _implementation(store)
    if module is not None:
        module.forget_stream(store, stream)


def state_for(store: Store, stream: str, spec: str, describe: str = '', grace: float = 0.0,
              span: float = 0.0, counting: bool = False, sessions: bool = False) -> EventTimeState:
    """The :class:`EventTimeState` of ``spec`` on ``store``; NotSupportedByStore for a store without one."""
    module = _implementation(store)
    if module is None:
        from minibatch.errors import NotSupportedByStore
        raise NotSupportedByStore(f'event-time windows need the SQLite or MongoDB store, not {store.describe()}')
    state: EventTimeState = module.State(store, stream, spec, describe, grace, span, counting, sessions)
    return state


def _implementation(store: Store) -> Any:
    for cls in type(store).__mro__:
        name = IMPLEMENTATIONS.get(cls.__module__)
        if name is not None:
            return importlib.import_module(name)
    return None
