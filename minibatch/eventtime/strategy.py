"""The event-time strategy: :class:`EventTimeWindow`, a WindowEmitter run by the normal consumer loop.

Each round (``window_ready``):

1. **index** (no user function): up to ``INDEX_BATCH`` new messages get their
   key and event time recorded in the store, each in the windows it belongs
   to (:func:`~minibatch.eventtime.assign.decide`), and the spec's latest event
   time rises. A message whose key or time cannot be read is dead-lettered
   with the reason; the others flow.
2. **late events**, when there are: dead-lettered, dropped (counted), or
   handed out as a late window, per ``on_late``.
3. **close**: a window row that the watermark (latest event time - grace) or
   the clock (``end + grace <= now``) has passed is *taken* by compare-and-set,
   so one consumer emits it; its messages (from the index) are claimed under
   one token, all or nothing. The runner then runs the function, renews the
   lease, retries and dead-letters as for any window; the commit marks the row
   done after its messages are committed.

Memory holds one index batch and the windows in flight, never the open windows' events.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
import traceback
import uuid
from typing import Any

from minibatch.emitter import WindowEmitter
from minibatch.errors import ConfigurationError
from minibatch.eventtime.assign import DONE, Event, assign_counts, decide, span, windows_of
from minibatch.eventtime.extract import (EventReadError, key_reader, key_value, plain_reader, time_reader,
                                        to_datetime)
from minibatch.eventtime.spec import Count, EventTimeSpec, Hopping, Session, Tumbling
from minibatch.eventtime.window import EventWindow
from minibatch.store.base import Message
from minibatch.store.eventtime import Commit, EventTimeState, Row, state_for

logger = logging.getLogger('minibatch.window')


@dataclasses.dataclass
class _Claim:
    """A window this consumer holds: its row (None for late events), its events' (time, first window start)."""
    row: Row | None
    key: str
    start: float
    end: float
    times: dict[Any, tuple[float, float]]
    late: bool = False


class EventTimeWindow(WindowEmitter):
    """Keyed event-time windows: tumbling, hopping or session, with grace, a watermark and late events.

    ``EventTimeWindow(stream, window=tumbling(60), key='sensor', time='ts', grace=10)``; the
    other keywords are the consumer options of every strategy (``workers=``, ``lease=``, ...).
    See :class:`~minibatch.eventtime.spec.EventTimeSpec` for ``key``, ``time``, ``grace``,
    ``on_late`` and ``close_by_clock``. The function gets an
    :class:`~minibatch.eventtime.window.EventWindow`.

    :raises InvalidWindowSpec: a bad window or grace
    :raises ConfigurationError: a bad key, time, on_late, or ``isolate=True`` (a window is one (key, window))
    """
    strict_options = True
    reads_groups_in_place = False  # its reads are its own (the state's index): a named group gets copies
    #: messages indexed per read; rounds index until a read comes back short, at most INDEX_ROUNDS reads
    INDEX_BATCH = 5000
    INDEX_ROUNDS = 2
    #: while windows are ready, look for new messages this often (seconds); every round otherwise
    INDEX_EVERY = 0.05
    #: ready windows read at once (taken one per round)
    READY_BATCH = 100
    #: late events handled per round
    LATE_BATCH = 500
    #: tumbling and count windows (a key's never share a message) are committed together, up to this many: a window's
    #: events lie on as many pages as it has events (keys interleave), and windows closed together share them
    COMMIT_BATCH = 100
    #: ... and none waits longer than this (seconds) after its function returned, nor past a tenth of its lease
    COMMIT_WAIT = 0.5

    def __init__(self, stream_name: Any, window: Any = None, key: Any = None, time: Any = None, grace: Any = 0.0,
                 on_late: Any = 'dead', close_by_clock: bool = True, **kwargs: Any) -> None:
        self.spec = EventTimeSpec(window, key=key, time=time, grace=grace, on_late=on_late,
                                  close_by_clock=close_by_clock)
        kwargs.pop('size', None), kwargs.pop('interval', None)  # make_emitter passes them to every class
        super().__init__(stream_name, **kwargs)
        if self.isolate:
            raise ConfigurationError('isolate=True splits a window into halves; an event-time window is one '
                                     '(key, window) and is retried and dead-lettered as a whole')
        self._key = key_reader(key)
        self._time = time_reader(time)
        #: the plain case of key and time, read without making Messages (EventTimeState.unindexed_fields)
        self._plain = plain_reader(key, time, counting=isinstance(self.spec.window, Count))
        self._decide = functools.partial(decide, self.spec.window, self.spec.grace)
        self._state: EventTimeState | None = None
        self._ready: list[Row] = []
        self._claims: dict[str, _Claim] = {}
        self._late_pending = True
        self._pending: list[tuple[Commit, Any, int]] = []  # commits gathered: (commit, window, messages)
        self._pending_since = 0.0
        self._due_at: float | None = None
        self._next_index = 0.0
        self.stats['late'] = 0

    @property
    def state(self) -> EventTimeState:
        """This spec's window state in the store (:mod:`minibatch.store.eventtime`)."""
        if self._state is None:
            self._state = state_for(self.store, self.stream_name, self.spec.spec_id(self.stream_name),
                                    self.spec.describe(self.stream_name), self.spec.grace, span(self.spec.window),
                                    counting=isinstance(self.spec.window, Count),
                                    sessions=isinstance(self.spec.window, Session))
        return self._state

    # -- the round --------------------------------------------------------
    def window_ready(self):
        self._due_at = None  # read again when the loop next asks (due_in), not every round
        if self._pending and self._waited_enough():
            self._commit_pending()
        now = time.monotonic()
        if not self._ready or now >= self._next_index:
            # while ready windows are queued, new messages are indexed every INDEX_EVERY seconds only
            self._next_index = now + self.INDEX_EVERY
            self._index()
        if self._late_pending:
            claimed = self._handle_late()
            if claimed:
                return True, (claimed,)
        for _ in range(self.READY_BATCH):
            row = self._next_ready()
            if row is None:
                break
            claimed = self._take(row)
            if claimed:
                return True, (claimed,)
        self._commit_pending()  # nothing more to run now: what ran is committed before the loop waits
        return False, ()

    def query(self, claimed=()):
        return list(claimed)

    def process(self, qs):
        return self.select(qs)  # claimed in window_ready already, all or nothing

    def due_in(self) -> float:
        """Seconds until the next open window closes by the clock (or a taken one may be taken over)."""
        if self._due_at is None:
            due = self.state.next_due(self.spec.grace if self.spec.close_by_clock else None)
            self._due_at = float('inf') if due is None else due
        return max(0.02, self._due_at - time.time())

    # -- indexing ---------------------------------------------------------
    def _index(self) -> None:
        """Record the key and event time of new messages (count windows: their number in the key)."""
        counting = isinstance(self.spec.window, Count)
        for _ in range(self.INDEX_ROUNDS):
            if self._plain is None:
                items: list[Any] = list(self.state.unindexed(self.INDEX_BATCH))
            else:
                items = self.state.unindexed_fields(self.INDEX_BATCH, self._plain)
            if not items:
                return
            events, bad = [], []
            for message in items:
                if type(message) is tuple:  # read by the store: (id, key, time)
                    events.append(Event(*message))
                    continue
                try:
                    t = 0.0 if counting else self._time(message.data, message.created)
                    events.append(Event(message.id, self._key(message.data), t))
                except EventReadError as exc:
                    bad.append((message, str(exc)))
            if bad:
                self._unreadable(bad)
            skipped = [m.id for m, _ in bad]
            if isinstance(self.spec.window, Count):
                self.state.index_counted(events, skipped, self.spec.window.size, assign_counts)
            else:
                decision = self.state.index(events, skipped, self._decide)
                if decision.late:
                    self._late_pending = True
                    self.stats['late'] += len(decision.late)
            if len(items) < self.INDEX_BATCH:
                return

    def _unreadable(self, bad: list[tuple[Message, str]]) -> None:
        """Dead-letter messages whose key or event time cannot be read, each with its reason."""
        token = uuid.uuid4().hex
        claimed = {m.id for m in self.store.claim(self.stream_name, [m for m, _ in bad], token, self.lease)}
        for message, why in bad:
            if message.id in claimed:
                dead = self.store.release(self.stream_name, token, [message.id], max_attempts=1,
                                          error=f'event-time window: cannot read this message: {why}')[1]
                self.stats['dead'] += dead
                logger.error('minibatch: stream %r: message %s dead-lettered: %s', self.stream_name, message.id, why)

    # -- closing ----------------------------------------------------------
    def _next_ready(self) -> Row | None:
        if not self._ready:
            now = time.time()
            max_t = self.state.max_time()
            until = float('-inf') if max_t is None else max_t - self.spec.grace
            if self.spec.close_by_clock:
                until = max(until, now - self.spec.grace)
            if isinstance(self.spec.window, Count):
                until = now  # a full row is due NOW, an unfilled one NOT_YET (minibatch.store.eventtime)
            self._ready = self.state.ready(until, now, self.READY_BATCH)
        return self._ready.pop(0) if self._ready else None

    def _take(self, row: Row) -> list[Message]:
        """Take ``row`` and claim all its messages; [] if another consumer has it, or not all are free yet."""
        token = uuid.uuid4().hex
        # this consumer's windows awaiting their commit hold none of this row's messages (tumbling and count
        # windows of a key never share one): the store need not read their claims
        closing = self.state.close(row, time.time(), self.lease, token, [c.token for c, _, _ in self._pending])
        if closing.outcome != 'claimed' or not closing.messages:
            return []
        # the events' times: to sort the messages, and for a hopping window's commit (_needed_later)
        times = ({} if closing.ordered and not isinstance(self.spec.window, Hopping) else
                 {i.id: (i.t, i.first if i.first is not None else i.t) for i in closing.items})
        return self._hold(closing.messages, token, row, row.key, row.start, row.end, times, ordered=closing.ordered)

    def _hold(self, claimed, token, row, key, start, end, times, late=False, ordered=False) -> list[Message]:
        if not ordered:
            claimed.sort(key=lambda m: (times.get(m.id, (0.0,))[0], m.id))
        for message in claimed:
            message.token = token
        self._claims[token] = _Claim(row, key, start, end, times, late)
        return claimed

    def _window_of(self, qs):
        claim = self._claims.get(qs[0].token) if qs else None
        if claim is None:
            return super()._window_of(qs)
        data = [m.data for m in qs]
        if isinstance(self.spec.window, Count):  # positions in the key, not times
            window = EventWindow(self.stream_name, data, key_value(claim.key), None, None)
        else:
            window = EventWindow(self.stream_name, data, key_value(claim.key), to_datetime(claim.start),
                                 to_datetime(claim.end), late=claim.late)
        if self.keep:
            window.id = self.store.save_window(self.stream_name, data, token=qs[0].token)
        else:
            window._record_at_commit = True
        return window

    # -- settling ---------------------------------------------------------
    def commit(self, qs, window):
        claim = self._claims.pop(qs[0].token, None) if qs else None
        if claim is None or claim.row is None:  # not ours, or late events: their messages, as any window
            super().commit(qs, window)
            if claim is not None:
                self.state.forget([m.id for m in qs])
            return
        done, back = self._needed_later(claim, qs)
        at_commit = getattr(window, '_record_at_commit', False)
        window._record_at_commit = False
        commit = Commit(claim.row, qs[0].token, [m.id for m in done], [m.id for m in back], self.commit_keep,
                        None if at_commit else window.id, list(window.data) if (self.keep and at_commit) else None)
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append((commit, window, len(done)))
        # only tumbling and count windows wait: a hopping window's commit must see the one before done (see
        # _needed_later), and a session's row may come to cover a committed session's time
        if (not isinstance(self.spec.window, (Tumbling, Count)) or len(self._pending) >= self.COMMIT_BATCH
                or self._waited_enough()):
            self._commit_pending()

    def _waited_enough(self) -> bool:
        """Whether the oldest gathered commit has waited COMMIT_WAIT s (or a tenth of the lease, if less)."""
        return time.monotonic() - self._pending_since >= min(self.COMMIT_WAIT, self.lease / 10)

    def _commit_pending(self) -> None:
        """Commit the windows gathered by :meth:`commit`, in one store call; then count them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        results = self.runner.settle_call(self.state.commit_many, [commit for commit, _, _ in pending])
        for (_, window, wanted), (count, window_id) in zip(pending, results):
            window.id = window_id
            if count < wanted:
                logger.warning('minibatch: %d of %d messages of a window on %r were no longer held (lease '
                               'expired); they may be delivered again', wanted - count, wanted, self.stream_name)
            window.processed = True
            self.stats['committed'] += 1
            self.stats['processed'] += count

    def flush(self):
        self._commit_pending()
        super().flush()

    def _needed_later(self, claim: _Claim, qs: list[Message]) -> tuple[list[Message], list[Message]]:
        """Split a hopping window's messages: those no other open window of the key needs, and the rest."""
        spec = self.spec.window
        if not isinstance(spec, Hopping):
            return qs, []
        rows = self.state.rows(claim.key, claim.start - spec.size, claim.end + spec.size)
        done: list[Message] = []
        back: list[Message] = []
        for message in qs:
            t, first = claim.times[message.id]
            # the windows it was added to (not those closed when it came), but this one
            others = [w for w in windows_of(spec, t) if w != (claim.start, claim.end) and w[0] >= first]
            (done if all(rows.get(w, DONE) == DONE for w in others) else back).append(message)
        return done, back

    def undo(self, qs, window=None, error=None):
        claim = self._claims.pop(qs[0].token, None) if qs else None
        super().undo(qs, window, error)
        if claim is not None and claim.row is not None:
            self.state.reschedule(claim.row, time.time())  # its messages' retry lease says when it can run

    def run(self, blocking=True):
        try:
            return super().run(blocking=blocking)
        finally:
            # windows given back when stopping: due now, for whichever consumer runs next
            rows = [claim.row for claim in self._claims.values() if claim.row is not None]
            self._claims.clear()
            if rows:
                try:
                    self.state.reopen(rows)
                except self.store.transient_errors:
                    logger.warning('minibatch: could not give back %d windows of %r; they are taken over when '
                                   'their lease ends', len(rows), self.stream_name)

    # -- late events ------------------------------------------------------
    def _handle_late(self) -> list[Message]:
        """Handle up to LATE_BATCH late events per ``on_late``; return the claimed messages of a late window."""
        items = self.state.late(self.LATE_BATCH)
        if not items:
            self._late_pending = False
            return []
        groups: dict[tuple[str, float, float], list] = {}
        for item in items:
            start, end = item.window or (item.t, item.t)
            groups.setdefault((item.key, start, end), []).append(item)
        on_late = self.spec.on_late
        for (key, start, end), group in groups.items():
            token = uuid.uuid4().hex
            claimed = self.store.claim(self.stream_name, [i.id for i in group], token, self.lease)
            if not claimed:
                continue
            ids = [m.id for m in claimed]
            if on_late == 'window':
                return self._hold(claimed, token, None, key, start, end, {i.id: (i.t, i.t) for i in group}, late=True)
            if on_late == 'drop':
                self.store.commit(self.stream_name, token, ids, keep=self.commit_keep)
                logger.info('minibatch: %d late events of key %s on %r dropped (window [%s, %s) was closed)',
                            len(ids), key, self.stream_name, to_datetime(start), to_datetime(end))
            elif on_late == 'dead':
                self._late_dead(token, ids, key, start, end, 'already closed (emitted, or the watermark passed '
                                'its end)')
            else:
                self._late_call(on_late, self._hold(claimed, token, None, key, start, end,
                                                    {i.id: (i.t, i.t) for i in group}, late=True))
            self.state.forget(ids)
        return []

    def _late_dead(self, token, ids, key, start, end, why) -> None:
        error = (f'late event: key {key} missed its window [{to_datetime(start).isoformat()}, '
                 f'{to_datetime(end).isoformat()}): {why}')
        self.stats['dead'] += self.store.release(self.stream_name, token, ids, error=error, max_attempts=1)[1]

    def _late_call(self, fn, claimed: list[Message]) -> None:
        """``on_late=fn``: call ``fn(window)`` here; commit its events, or dead-letter them if it raises."""
        token = str(claimed[0].token)
        window = self._window_of(claimed)
        claim = self._claims.pop(token)
        ids = [m.id for m in claimed]
        try:
            fn(window)
        except Exception as exc:
            text = ''.join(traceback.format_exception(exc))[-2000:]
            self._late_dead(token, ids, claim.key, claim.start, claim.end, f'on_late={fn!r} raised:\n{text}')
        else:
            self.store.commit(self.stream_name, token, ids, keep=self.commit_keep)
