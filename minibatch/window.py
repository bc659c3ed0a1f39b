"""Window emitters: when to cut a window, and what happens to it.

A :class:`WindowEmitter` runs rounds. Each round it

1. ``window_ready()`` -> ``(ready, query_args)``: is there a window to cut?
2. ``query(*query_args)`` -> the candidate messages (read-only);
3. ``process(messages)`` -> the messages it could claim (atomic, with a lease);
4. ``emit(messages)`` -> records the window and submits the function to the executor;
5. later, when the function returned: ``commit(messages, window)`` (and the
   sink got the result), or ``undo(messages, window, error)`` when it raised.

Subclasses override any step (see docs/windows.rst); ``due_in()`` tells when a
strategy needs a round whatever arrives (time windows). The loop around the
steps (executor, leases, waiting, stopping) is :class:`minibatch.runner.Runner`;
``emitter.run()`` starts it. Claims carry a lease the runner renews while the
function runs; a consumer that dies leaves leases that expire, so its messages
are delivered again by another consumer.
"""
import datetime
import logging
import os
import socket
import time
import uuid

from minibatch.asyncio_executor import is_async
from minibatch.errors import ConfigurationError, InvalidWindowSpec
from minibatch.legacy import LegacyEmitterAPI
from minibatch import bindings
from minibatch.options import ConsumerOptions, refuse_unknown
from minibatch.runner import Runner, summary
from minibatch.store.base import Message, utcnow

logger = logging.getLogger(__name__)


class WindowEmitter(LegacyEmitterAPI):
    """Base class of window strategies: the hooks a strategy overrides, and ``run()`` to consume.

    :param stream: stream name or :class:`~minibatch.models.Stream`
    :param interval: the strategy's parameter (seconds for time windows, the
        window size for :class:`CountWindow`)
    :param emitfn: the function called with each :class:`~minibatch.models.Window`
    :param processfn: optional ``fn(messages) -> messages`` applied to claimed messages before emitting
    :param executor: see :func:`minibatch.executors.make_executor`; default a process pool
    :param workers: parallel windows (and pool size); default the number of CPUs
    :param keep: keep committed messages (state ``done``) instead of deleting them
    :param sink: object with ``put(data)``; gets the function's result (or the window data)
    :param queue: a ``multiprocessing.Queue``; putting ``True`` stops the emitter
    :param emit_empty: call the function for empty time windows too
    :param max_attempts: deliveries of a message before it is dead-lettered (>= 1)
    :param lease: seconds a claim is held without renewal; renewed every third of it
    :param retry_backoff: first delay before a failed window is retried; doubles per attempt, at most 60 s
    :param url: store URL, used when ``stream`` is a name
    """
    #: longest idle sleep between polls when the store cannot push wake-ups
    MAX_POLL = 1.0
    #: longest idle sleep when it can (the wake-up comes first anyway)
    MAX_PUSH_WAIT = 5.0
    #: stop waiting for in-flight windows this long after a stop was asked
    STOP_GRACE = 30.0
    #: seconds between the reports a running consumer writes for stream.stats()
    HEARTBEAT = 5.0
    #: an idle consumer notices stop() (or SIGTERM) within this many seconds
    STOP_CHECK = 0.25

    def __init__(self, stream_name, interval=None, processfn=None, emitfn=None, emit_empty=False, executor=None,
                 max_workers=None, stream=None, stream_url=None, forwardfn=None, queue=None, *, size=None,
                 workers=None, keep=False, sink=None, max_attempts=3, lease=60.0, retry_backoff=1.0, url=None,
                 cnx_kwargs=None, concurrency=None, **kwargs):
        # the positional order and the names stream=, stream_url=, forwardfn= are minibatch 0.6's
        if type(self) in BUILT_IN:
            # a typo (max_attemps=5) must not be ignored; custom emitters get their own keywords in self.kwargs
            refuse_unknown(kwargs, type(self).__name__)
        if stream is not None:
            stream_name = stream
        url = url if url is not None else stream_url
        if sink is None and forwardfn is not None:
            sink = _CallableSink(forwardfn)
        #: the consumer's options, validated (see :class:`minibatch.options.ConsumerOptions`)
        self.options = ConsumerOptions(processfn=processfn, executor=executor,
                                       workers=workers if workers is not None else max_workers,
                                       keep=keep, sink=sink, queue=queue, emit_empty=emit_empty,
                                       max_attempts=max_attempts, lease=lease, retry_backoff=retry_backoff,
                                       concurrency=concurrency)
        self._stream_arg = stream_name
        self.stream_name = stream_name if isinstance(stream_name, str) else stream_name.name
        self.url = url
        self.cnx_kwargs = cnx_kwargs or {}
        #: the strategy's parameter: 1 by default (as in 0.6); a custom emitter given only size= sees it here
        self.interval = interval if interval is not None else (size if size is not None else 1)
        #: the size= given to @streaming / make_emitter, if any
        self.size = size
        self.emitfn = emitfn
        # the options as attributes, where strategies (and 0.6 emitters) read and may change them
        options = self.options
        self.processfn, self.executor_arg, self.workers = options.processfn, options.executor, options.workers
        self.keep, self.sink, self.queue, self.emit_empty = options.keep, options.sink, options.queue, \
            options.emit_empty
        self.max_attempts, self.lease, self.retry_backoff = options.max_attempts, options.lease, \
            options.retry_backoff
        self.concurrency = options.concurrency
        if self.concurrency is not None and emitfn is not None and not is_async(emitfn):
            raise ConfigurationError('concurrency= is for async def functions (windows awaiting on an event '
                                     'loop); for a plain function use workers=')
        #: extra keyword arguments of @streaming, for custom emitters
        self.kwargs = kwargs
        #: the exception that ended a background consumer (streaming(blocking=False)), else None
        self.error = None
        self._stream = None
        self._runner = None
        #: counts for this emitter's lifetime, e.g. for tests and status pages: windows emitted,
        #: windows committed and failed, messages emitted, committed (processed) and dead-lettered
        self.stats = {'windows': 0, 'committed': 0, 'failed': 0, 'messages': 0, 'processed': 0, 'dead': 0}
        #: this consumer's id in stream.stats()['consumers']
        self.consumer_id = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}'

    # -- resources --------------------------------------------------------
    @property
    def stream(self):
        """The :class:`~minibatch.models.Stream` this emitter consumes (created if needed)."""
        if self._stream is None:
            if not isinstance(self._stream_arg, str):  # a Stream object was given
                self._stream = self._stream_arg
            else:
                self._stream = bindings.get('stream').get_or_create(self.stream_name, url=self.url,
                                                                    **self.cnx_kwargs)
        return self._stream

    @property
    def store(self):
        return self.stream.store

    @property
    def runner(self) -> Runner:
        """The :class:`~minibatch.runner.Runner` that runs this strategy (its consumer loop)."""
        if self._runner is None:
            self._runner = Runner(self)
        return self._runner

    @property
    def capacity(self) -> int:
        """Windows this consumer runs at once (its executor's workers); 0 before it started."""
        return self.runner.capacity

    @property
    def _executor(self):
        return self.runner.executor

    def _setup(self, waiter=True):
        self.runner.setup(waiter=waiter)

    def close(self):
        """Shut down the executor minibatch created (and the wake-up watcher). Idempotent.

        A blocking ``run()`` does this when it ends; after ``run(blocking=False)``
        rounds the pool is kept for the next round, so call ``close()`` when done.
        """
        self.runner.teardown()

    # -- the overridable steps --------------------------------------------
    def window_ready(self):
        """Return ``(ready, query_args)``; ``query(*query_args)`` is called when ready."""
        raise NotImplementedError

    def query(self, *args):
        """Return the candidate messages of the next window (read-only; ``process`` claims them)."""
        raise NotImplementedError

    def buffer(self, limit=None, until=None):
        """Messages waiting in the stream, oldest first, as :class:`~minibatch.store.base.Message`.

        The store-independent way for custom emitters to look at the stream
        (``Buffer.objects`` works on MongoDB only).
        """
        return self.store.find_available(self.stream_name, limit=limit, until=until)

    def process(self, qs):
        """Claim the messages ``qs`` atomically; return those this consumer now holds.

        ``qs`` may hold :class:`Message` objects, ``Buffer`` documents or ids.
        Messages another consumer took first are silently left out; the rest
        keep the order of ``qs`` (a custom emitter may have sorted them).
        With a ``processfn``, what it returns is the window (see :meth:`select`).
        """
        return self.select(self.claim(qs))

    def claim(self, qs):
        """Claim ``qs`` atomically under one new lease token; return the claimed, in the order of ``qs``."""
        items = [_as_claimable(m) for m in (qs or [])]
        if not items:
            return []
        token = uuid.uuid4().hex
        claimed = self.store.claim(self.stream_name, items, token, self.lease)
        position = {getattr(item, 'id', item): i for i, item in enumerate(items)}
        claimed.sort(key=lambda m: position.get(m.id, len(position)))
        for message in claimed:
            message.token = token
        return claimed

    def select(self, claimed):
        """Apply ``processfn`` to a claimed window: what it returns is emitted.

        Claimed messages it leaves out are committed at once (they are done,
        not lost, and not delivered again); without a ``processfn`` the
        window is ``claimed`` unchanged. An empty result emits nothing unless
        ``emit_empty``.
        """
        if not claimed or self.processfn is None:
            return claimed
        kept = list(self.processfn(claimed) or [])
        dropped = {m.id for m in claimed} - {getattr(m, 'id', None) for m in kept}
        if dropped:
            done = self.store.commit(self.stream_name, claimed[0].token, list(dropped), keep=self.keep)
            self.stats['processed'] += done
        return kept

    def emit(self, qs, query_args=None):
        """Record a window of the claimed messages ``qs`` and submit the function. Returns the Window."""
        data = [m.data for m in qs]
        if self.keep:
            window = bindings.get('window').for_data(self.stream_name, data,
                                                     id=self.store.save_window(self.stream_name, data))
        else:
            # no record yet: commit() writes it, without a copy of data the commit deletes (one write less)
            window = bindings.get('window').for_data(self.stream_name, data)
            window._record_at_commit = True
        self.stats['windows'] += 1
        self.stats['messages'] += len(qs)
        self.runner.submit(qs, window)
        return window

    def commit(self, qs, window):
        """The window succeeded: remove (or keep, with ``keep=True``) its messages; mark the window processed."""
        token = qs[0].token if qs else None
        if getattr(window, '_record_at_commit', False):
            done, window.id = self.store.commit_window(self.stream_name, token, [m.id for m in qs], keep=self.keep,
                                                       data=list(window.data) if self.keep else None)
            window._record_at_commit = False
        else:
            done = self.store.commit(self.stream_name, token, [m.id for m in qs], keep=self.keep,
                                     window_id=window.id)
        if done < len(qs):
            logger.warning('minibatch: %d of %d messages of a window on %r were no longer held '
                           '(lease expired); they may be delivered again', len(qs) - done, len(qs),
                           self.stream_name)
        window.processed = True
        self.stats['committed'] += 1
        self.stats['processed'] += done

    def undo(self, qs, window=None, error=None):
        """The window failed: count an attempt per message, retry after a backoff or dead-letter."""
        self.stats['failed'] += 1
        if not qs:
            return
        attempts = max(m.attempts for m in qs)
        backoff = min(self.retry_backoff * (2 ** attempts), 60.0) if self.retry_backoff else 0.0
        retried, dead = self.store.release(self.stream_name, qs[0].token, [m.id for m in qs], error=error,
                                           max_attempts=self.max_attempts, backoff=backoff)
        self.stats['dead'] += dead
        if retried:
            self.runner.retry_due_in(backoff)
        if dead:
            logger.error('minibatch: %d messages of stream %r dead-lettered after %d attempts: %s',
                         dead, self.stream_name, self.max_attempts, summary(error))
        else:
            logger.warning('minibatch: window of %d messages on %r failed (attempt %d of %d), retrying in %.1fs: %s',
                           len(qs), self.stream_name, attempts + 1, self.max_attempts, backoff, summary(error))

    def timestamp(self, *args):
        """Note that a window was cut (time windows record ``last_read``). Returns the time used."""
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def sleep(self):
        """Wait before the next round: until a function finishes, a message arrives, or a poll is due.

        Waiting costs no store queries (see :meth:`minibatch.runner.Runner.wait`).
        """
        self.runner.wait()

    def due_in(self) -> float:
        """Seconds until this strategy must run a round whatever arrives (a time window's slot ends).

        ``inf`` (the default) when only new messages can make a window ready.
        """
        return float('inf')

    # -- running ----------------------------------------------------------
    def run(self, blocking=True):
        """Consume the stream: until ``stop()``, ``True`` on the queue, SIGTERM or Ctrl-C.

        ``blocking=False`` runs exactly one round: at most one window is cut,
        and the call returns once it is committed or undone.
        """
        self.runner.run(blocking=blocking)
        return self

    def stop(self):
        """Ask a running emitter to stop (from any thread): in-flight windows finish, no new ones start."""
        self.runner.stop_event.set()

    @property
    def stopped(self):
        return self.runner.stop_event.is_set()

    def _should_stop(self):
        return self.runner.should_stop()


class CountWindow(WindowEmitter):
    """Emit windows of exactly ``size`` messages, oldest first.

    ``CountWindow(stream, size=None, interval=None)`` as in minibatch 0.6:
    ``size`` is the count (default 1; given only ``interval``, that is the
    count); ``interval`` was, in 0.6, the pause between looks (default
    0.01 s). It is kept as an attribute, but an idle consumer here is woken
    by the store when messages arrive and otherwise polls with a backoff
    (see docs/compatibility.rst), so it no longer sets the pace.

    Waits until ``size`` messages are available. With competing consumers, a
    consumer that could claim only part of a window gives it back and retries.
    """

    #: windows' worth of messages read per query: one read serves several windows
    #: (messages never change once appended, and claims settle who gets them)
    LOOKAHEAD = 5
    #: ... but never more messages than this per read
    MAX_LOOKAHEAD = 2000

    def __init__(self, stream_name, size=None, interval=None, **kwargs):
        count = size if size is not None else (interval if interval is not None else 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidWindowSpec(f'CountWindow needs size >= 1 (an integer), got {count!r}')
        look = interval if interval is not None else 0.01
        if isinstance(look, bool) or not isinstance(look, (int, float)) or look <= 0:
            raise InvalidWindowSpec(f'CountWindow interval is seconds between looks (> 0), got {interval!r}')
        super().__init__(stream_name, interval=look, size=count, **kwargs)
        self._ahead = []  # available messages read ahead, oldest first

    def window_ready(self):
        if len(self._ahead) < self.size:
            limit = max(self.size, min(self.size * self.LOOKAHEAD, self.MAX_LOOKAHEAD))
            self._ahead = self.buffer(limit=limit)
        candidates = self._ahead[:self.size]
        return len(candidates) >= self.size, (candidates,)

    def query(self, candidates=()):
        return list(candidates)

    def process(self, qs):
        claimed = self.claim(qs)
        # whether we got them or another consumer did, these are gone; competing
        # consumers then move on to the next window read ahead instead of all
        # racing again for the oldest one (only a short read-ahead is read anew)
        tried = {getattr(m, 'id', m) for m in qs}
        self._ahead = [m for m in self._ahead if m.id not in tried]
        for _ in range(3):  # others took some: top up from the next available messages
            if len(claimed) >= self.size or not claimed:
                break
            more = self.buffer(limit=self.size - len(claimed))
            if not more:
                break
            extra = self.store.claim(self.stream_name, more, claimed[0].token, self.lease)
            for message in extra:
                message.token = claimed[0].token
            claimed += extra
        if claimed and len(claimed) < self.size:
            self.store.unclaim(self.stream_name, claimed[0].token, [m.id for m in claimed])
            return []
        if len(claimed) > self.size:
            # offered more than a window (a custom query()): the rest waits for the next one, untouched
            extra = claimed[self.size:]
            self.store.unclaim(self.stream_name, extra[0].token, [m.id for m in extra])
            claimed = claimed[:self.size]
        # a full window is claimed; processfn then chooses what of it is emitted
        return self.select(claimed)


class _TimeWindow(WindowEmitter):
    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        interval = self.interval  # as in 0.6: 1 second when not given
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise InvalidWindowSpec(f'{type(self).__name__} needs interval > 0 (seconds), got {interval!r}')
        self.interval = float(interval)
        #: most messages in one time window; the rest go to the next one (bounded memory)
        self.max_window = int(self.kwargs.pop('max_window', 100_000))

    def query(self, since=None, until=None):
        return self.buffer(limit=self.max_window, until=until)


class RelaxedTimeWindow(_TimeWindow):
    """Every ``interval`` seconds, emit all messages that arrived since the last window.

    Messages are not guaranteed to belong to a given time slot (use
    :class:`FixedTimeWindow` for that).
    """

    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        self._next = time.monotonic() + self.interval

    def window_ready(self):
        if time.monotonic() < self._next:
            return False, ()
        self._next = time.monotonic() + self.interval
        return True, (None, utcnow())

    def timestamp(self, *args):
        now = super().timestamp()
        self.store.update_stream(self.stream_name, last_read=now)
        return now

    def due_in(self):
        return max(0.0, self._next - time.monotonic())


class FixedTimeWindow(_TimeWindow):
    """Emit the messages of consecutive, fixed slots of ``interval`` seconds.

    The slots follow the stream's ``last_read``; each slot is handed to exactly
    one consumer by an atomic compare-and-set of ``last_read``. A window holds
    the messages created before the slot's end that were not yet delivered
    (messages of an earlier slot that failed and are retried join the next one).

    When the slots are more than ``MAX_CATCH_UP`` behind the clock (no
    consumer ran for a while), the missed slots are merged into one window
    that ends at the last full slot, rather than cut one by one.
    """
    MAX_CATCH_UP = 10

    def __init__(self, stream_name, interval=None, **kwargs):
        super().__init__(stream_name, interval=interval, **kwargs)
        self._last_read = None

    def window_ready(self):
        if self._last_read is None:
            info = self.store.get_stream(self.stream_name)
            self._last_read = info.last_read
        now = utcnow()
        slots = int((now - self._last_read).total_seconds() // self.interval)
        if slots < 1:
            return False, ()
        start = self._last_read
        slot_end = start + datetime.timedelta(seconds=self.interval * (slots if slots > self.MAX_CATCH_UP else 1))
        won = self.store.compare_and_set_last_read(self.stream_name, start, slot_end)
        # winner or not, the next slot starts where the store says it does
        self._last_read = slot_end if won else None
        return won, (start, slot_end)

    def due_in(self):
        if self._last_read is None:
            return 0.0
        slot_end = self._last_read + datetime.timedelta(seconds=self.interval)
        return max(0.0, (slot_end - utcnow()).total_seconds())


#: the strategies minibatch ships: they refuse keywords they do not know (see minibatch.options)
BUILT_IN = frozenset({CountWindow, RelaxedTimeWindow, FixedTimeWindow})


class _CallableSink:
    """A sink around a plain callable: minibatch 0.6's ``forwardfn=``."""

    def __init__(self, fn):
        self.put = fn


def _as_claimable(item):
    if isinstance(item, Message):
        return item
    pk = getattr(item, 'pk', None)
    if pk is not None:
        return pk
    if isinstance(item, dict):
        return item.get('_id', item.get('id'))
    return item


def validate_emitter_class(emitter):
    if not (isinstance(emitter, type) and issubclass(emitter, WindowEmitter)):
        raise ConfigurationError(f'emitter must be a WindowEmitter subclass, got {emitter!r}')
    return emitter
