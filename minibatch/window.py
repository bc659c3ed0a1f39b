"""Window emitters: when to cut a window, and what happens to it.

A :class:`WindowEmitter` runs rounds. Each round it

1. ``window_ready()`` -> ``(ready, query_args)``: is there a window to cut?
2. ``query(*query_args)`` -> the candidate messages (read-only);
3. ``process(messages)`` -> the messages it could claim (atomic, with a lease);
4. ``emit(messages)`` -> records the window and submits the function to the executor;
5. later, when the function returned: ``commit(messages, window)`` (and the
   sink got the result), or ``undo(messages, window, error)`` when it raised.

Subclasses override any step (see docs/windows.rst). Claims carry a lease the
emitter renews while the function runs; a consumer that dies leaves leases
that expire, so its messages are delivered again by another consumer.
"""
import concurrent.futures
import datetime
import logging
import os
import queue as queue_module
import signal
import socket
import threading
import time
import traceback
import uuid

from minibatch.errors import ConfigurationError, InvalidWindowSpec
from minibatch.executors import make_executor
from minibatch.legacy import LegacyEmitterAPI
from minibatch.marshaller import marshal
from minibatch.models import Stream, Window
from minibatch.store.base import Message, utcnow

logger = logging.getLogger(__name__)

class InFlight:
    """A window submitted to the executor and not yet committed or undone."""
    __slots__ = ('messages', 'window', 'future', 'renewed', 'executor')

    def __init__(self, messages, window, future, executor=None):
        self.messages = messages
        self.window = window
        self.future = future
        self.executor = executor  # the pool it runs on, to tell a broken pool from its replacement
        self.renewed = time.monotonic()


class WindowEmitter(LegacyEmitterAPI):
    """Base class of window strategies; runs the consumer loop.

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
                 cnx_kwargs=None, **kwargs):
        # the positional order and the names stream=, stream_url=, forwardfn= are minibatch 0.6's
        if max_attempts is None or int(max_attempts) < 1:
            raise InvalidWindowSpec(f'max_attempts must be >= 1, got {max_attempts!r}')
        if lease is None or lease <= 0:
            raise InvalidWindowSpec(f'lease must be a positive number of seconds, got {lease!r}')
        if stream is not None:
            stream_name = stream
        url = url if url is not None else stream_url
        if sink is None and forwardfn is not None:
            sink = _CallableSink(forwardfn)
        self._stream_arg = stream_name
        self.stream_name = stream_name.name if isinstance(stream_name, Stream) else stream_name
        self.url = url
        self.cnx_kwargs = cnx_kwargs or {}
        #: the strategy's parameter: 1 by default (as in 0.6); a custom emitter given only size= sees it here
        self.interval = interval if interval is not None else (size if size is not None else 1)
        #: the size= given to @streaming / make_emitter, if any
        self.size = size
        self.processfn = processfn
        self.emitfn = emitfn
        self.executor_arg = executor
        self.workers = workers or max_workers
        self.keep = keep
        self.sink = sink
        self.queue = queue
        self.emit_empty = emit_empty
        self.max_attempts = int(max_attempts)
        self.lease = float(lease)
        self.retry_backoff = float(retry_backoff)
        #: extra keyword arguments of @streaming, for custom emitters
        self.kwargs = kwargs
        self._stream = None
        self._executor = None
        self._inflight = []
        self._stop_event = threading.Event()
        self._waiter = None
        self._idle = 0.01
        self._next_expiry = 0.0
        self._next_housekeeping = 0.0
        self._isolating = 0  # windows still to run alone after a worker crash (see _reap)
        #: counts for this emitter's lifetime, e.g. for tests and status pages: windows emitted,
        #: windows committed and failed, messages emitted, committed (processed) and dead-lettered
        self.stats = {'windows': 0, 'committed': 0, 'failed': 0, 'messages': 0, 'processed': 0, 'dead': 0}
        #: this consumer's id in stream.stats()['consumers']
        self.consumer_id = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}'
        self._started = None
        self._next_heartbeat = None  # None: this run reports no heartbeats (run(blocking=False))
        self._last_beat = (0.0, 0)  # (monotonic time, processed) at the last heartbeat, for the rate

    # -- resources --------------------------------------------------------
    @property
    def stream(self):
        """The :class:`~minibatch.models.Stream` this emitter consumes (created if needed)."""
        if self._stream is None:
            if isinstance(self._stream_arg, Stream):
                self._stream = self._stream_arg
            else:
                self._stream = Stream.get_or_create(self.stream_name, url=self.url, **self.cnx_kwargs)
        return self._stream

    @property
    def store(self):
        return self.stream.store

    def _setup(self, waiter=True):
        if self._executor is None:
            self._executor, self.capacity, self._owns_executor, ships = make_executor(
                self.executor_arg, self.workers)
            self._call = marshal(self.emitfn) if (ships and self.emitfn) else self.emitfn
        if waiter and self._waiter is None:
            self._waiter = self.store.waiter(self.stream_name)

    def close(self):
        """Shut down the executor minibatch created (and the wake-up watcher). Idempotent.

        A blocking ``run()`` does this when it ends; after ``run(blocking=False)``
        rounds the pool is kept for the next round, so call ``close()`` when done.
        """
        self._teardown()

    def _teardown(self):
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        if self._executor is not None and self._owns_executor:
            self._executor.shutdown(wait=True)
        self._executor = None

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
        window = Window.for_data(self.stream_name, data, id=self.store.save_window(self.stream_name, data))
        self.stats['windows'] += 1
        self.stats['messages'] += len(qs)
        if self.emitfn is None:
            future = concurrent.futures.Future()
            future.set_result(None)
        else:
            try:
                try:
                    future = self._executor.submit(self._call, window)
                except concurrent.futures.BrokenExecutor:
                    # a worker died since the last round; its windows are settled by _reap
                    self._replace_broken_executor()
                    future = self._executor.submit(self._call, window)
            except BaseException:
                # not started (pool broken, Ctrl-C in an inline function): give the messages
                # back at once, without counting an attempt, rather than wait for the lease
                if qs:
                    self._store_call(self.store.unclaim, self.stream_name, qs[0].token, [m.id for m in qs])
                raise
        self._inflight.append(InFlight(qs, window, future, self._executor))
        return window

    def commit(self, qs, window):
        """The window succeeded: remove (or keep, with ``keep=True``) its messages; mark the window processed."""
        token = qs[0].token if qs else None
        done = self.store.commit(self.stream_name, token, [m.id for m in qs], keep=self.keep, window_id=window.id)
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
            # check for due retries when the backoff ends, not only at the next periodic expiry
            self._next_expiry = min(self._next_expiry, time.monotonic() + backoff)
        if dead:
            logger.error('minibatch: %d messages of stream %r dead-lettered after %d attempts: %s',
                         dead, self.stream_name, self.max_attempts, _summary(error))
        else:
            logger.warning('minibatch: window of %d messages on %r failed (attempt %d of %d), retrying in %.1fs: %s',
                           len(qs), self.stream_name, attempts + 1, self.max_attempts, backoff, _summary(error))

    def timestamp(self, *args):
        """Note that a window was cut (time windows record ``last_read``). Returns the time used."""
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def sleep(self):
        """Wait before the next round: until a function finishes, a message arrives, or a poll is due.

        Waiting costs no store queries: the waiter watches for appends (change
        stream, file changes) while running windows are checked in between.
        """
        timeout = self._next_timeout()
        futures = [flight.future for flight in self._inflight]
        if futures and len(futures) >= self.capacity:
            concurrent.futures.wait(futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
            return
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._waiter.wait(min(remaining, 0.02 if futures else self.STOP_CHECK)):
                # a waiter that sees every change will wake us again: no follow-up polls needed
                self._idle = self.MAX_PUSH_WAIT if getattr(self._waiter, 'sees_all_changes', False) else 0.01
                return
            if any(future.done() for future in futures) or self._stop_event.is_set():
                return
            if time.monotonic() >= deadline:
                break
        cap = self.MAX_PUSH_WAIT if getattr(self._waiter, 'supported', False) else self.MAX_POLL
        self._idle = min(self._idle * 2, cap)

    def _next_timeout(self):
        now = time.monotonic()
        heartbeat = float('inf') if self._next_heartbeat is None else self._next_heartbeat - now
        return max(0.001, min(self._idle, self._next_expiry - now, self._due_in(), heartbeat))

    def _due_in(self):
        """Seconds until this strategy has something to do regardless of new messages (time windows)."""
        return float('inf')

    # -- running ----------------------------------------------------------
    def run(self, blocking=True):
        """Consume the stream: until ``stop()``, ``True`` on the queue, SIGTERM or Ctrl-C.

        ``blocking=False`` runs exactly one round: at most one window is cut,
        and the call returns once it is committed or undone.
        """
        if not blocking:
            # one round, no wake-up watcher; the pool stays for the next round (see close())
            self._setup(waiter=False)
            self._round()
            self._drain(timeout=None)
            return self
        self._setup()
        restore = self._install_sigterm()
        self._started = utcnow()
        self._next_heartbeat = 0.0  # report at once, then every HEARTBEAT seconds
        try:
            while not self._should_stop():
                try:
                    worked = self._round()
                except self.store.transient_errors as exc:
                    logger.warning('minibatch: store unavailable (%s); retrying', _summary(exc))
                    self._stop_event.wait(min(self._idle * 4, 2.0))
                    self._idle = min(self._idle * 2, self.MAX_POLL)
                    continue
                if not worked:
                    self.sleep()
        except KeyboardInterrupt:
            logger.info('minibatch: interrupted; finishing in-flight windows of %r', self.stream_name)
        finally:
            try:
                self._drain(timeout=self.STOP_GRACE)
                self._heartbeat(state='stopped')
            finally:
                if restore:
                    restore()
                self._teardown()
        return self

    def stop(self):
        """Ask a running emitter to stop (from any thread): in-flight windows finish, no new ones start."""
        self._stop_event.set()

    @property
    def stopped(self):
        return self._stop_event.is_set()

    def _should_stop(self):
        if self._stop_event.is_set():
            return True
        if self.queue is not None:
            try:
                if self.queue.get_nowait() is True:
                    self._stop_event.set()
            except queue_module.Empty:
                pass
            except (EOFError, OSError):  # the queue's other end is gone: nobody can stop us any more
                self.queue = None
        return self._stop_event.is_set()

    def _round(self):
        """One pass: settle finished windows, keep leases alive, cut at most one new window."""
        self._reap()
        self._maintain()
        capacity = 1 if self._isolating else self.capacity
        if len(self._inflight) >= capacity or self._stop_event.is_set():
            return False
        ready, args = self.window_ready()
        if not ready:
            return False
        qs = self.process(self.query(*(args or ())))
        if not qs and not self.emit_empty:
            return False
        self.emit(qs)
        self.timestamp(*(args or ()))
        self._idle = 0.01
        return True

    def _reap(self):
        done = [f for f in self._inflight if f.future.done()]
        # cancelled: left behind in a pool we replaced; broken: its pool lost a worker
        broken = [f for f in done if f.future.cancelled()
                  or isinstance(f.future.exception(), concurrent.futures.BrokenExecutor)]
        if any(flight.executor is self._executor for flight in broken):
            self._replace_broken_executor()
        if len(broken) > 1:
            # a dead worker fails every window of its pool, and which one killed it is
            # unknown: give them all back without counting an attempt, and run the next
            # windows one at a time, so that a repeat crash points at its culprit
            for flight in broken:
                if flight.messages:
                    self._store_call(self.store.unclaim, self.stream_name, flight.messages[0].token,
                                     [m.id for m in flight.messages])
                self._inflight.remove(flight)
            self._isolating = max(self._isolating, len(broken))
            done = [f for f in done if f not in broken]
        for flight in done:
            self._settle(flight)

    def _settle(self, flight):
        if self._isolating:
            self._isolating -= 1
        try:
            result = flight.future.result()
            if self.sink is not None:
                self.sink.put(_sink_payload(result, flight.window))
        except Exception as exc:
            if isinstance(exc, concurrent.futures.BrokenExecutor):
                error = (f'{type(exc).__name__}: the worker process died while running this window '
                         f'(killed, out of memory or crashed): {exc}')
            else:
                error = ''.join(traceback.format_exception(exc))[-4000:]
            self._store_call(self.undo, flight.messages, flight.window, error)
        else:
            self._store_call(self.commit, flight.messages, flight.window)
        self._inflight.remove(flight)

    def _replace_broken_executor(self):
        # a pool whose worker died refuses all further work; start a fresh one
        # (only ours: an executor the user passed in is theirs to manage)
        if not self._owns_executor or self._executor is None:
            return
        logger.error('minibatch: a worker process of %r died; starting a new pool', self.stream_name)
        old, self._executor = self._executor, None
        old.shutdown(wait=False, cancel_futures=True)
        self._setup(waiter=False)

    def _store_call(self, fn, *args):
        """Settle a window even if the store is briefly unreachable; give up only when the lease is gone."""
        deadline = time.monotonic() + self.lease
        delay = 0.1
        while True:
            try:
                return fn(*args)
            except self.store.transient_errors as exc:
                if time.monotonic() > deadline:
                    logger.error('minibatch: could not settle a window on %r (%s); its lease will expire and '
                                 'it will be delivered again', self.stream_name, _summary(exc))
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _renew_leases(self):
        now = time.monotonic()
        for flight in self._inflight:
            if now - flight.renewed > self.lease / 3 and flight.messages:
                held = self.store.renew(self.stream_name, flight.messages[0].token, self.lease)
                flight.renewed = now
                if not held:
                    logger.warning('minibatch: lost the lease of a running window on %r', self.stream_name)

    def _maintain(self):
        self._renew_leases()
        now = time.monotonic()
        if now >= self._next_expiry:
            self.store.expire_leases(self.stream_name, max_attempts=self.max_attempts)
            # expired leases (a consumer died) need not be found within a second; a due
            # retry of our own is scheduled by undo(). An idle consumer stays cheap.
            self._next_expiry = now + max(0.2, min(self.lease / 4, 5.0))
        if now >= self._next_housekeeping:
            if self.stream.max_age:
                self.stream.housekeep()
            self._next_housekeeping = now + 60.0
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.HEARTBEAT

    def _heartbeat(self, state='running'):
        """Report this consumer's figures to the store (see minibatch.status); best effort."""
        if self._next_heartbeat is None:
            return
        now = time.monotonic()
        then, processed_then = self._last_beat
        elapsed = now - then if then else 0.0
        rate = (self.stats['processed'] - processed_then) / elapsed if elapsed > 0 else 0.0
        self._last_beat = (now, self.stats['processed'])
        info = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': self._started, 'state': state,
                'heartbeat': self.HEARTBEAT, 'in_flight': len(self._inflight), 'rate': round(rate, 3),
                **{key: self.stats[key] for key in ('windows', 'committed', 'failed', 'processed', 'dead')}}
        try:
            self.store.heartbeat(self.stream_name, self.consumer_id, info)
        except self.store.transient_errors as exc:
            logger.debug('minibatch: heartbeat of %r skipped: %s', self.stream_name, exc)

    def _drain(self, timeout):
        """Settle in-flight windows: wait for them up to ``timeout``, then give the rest back."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight:
            remaining = self.lease / 3 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            # wake at least every third of the lease: a long window keeps its claim while we wait
            concurrent.futures.wait([f.future for f in self._inflight], timeout=min(remaining, self.lease / 3),
                                    return_when=concurrent.futures.FIRST_COMPLETED)
            self._reap()
            try:
                self._renew_leases()
            except self.store.transient_errors as exc:
                logger.warning('minibatch: could not renew leases (%s); retrying', _summary(exc))
        for flight in list(self._inflight):
            # still running after the grace period: hand the messages back untouched
            if flight.messages:
                self._store_call(self.store.unclaim, self.stream_name, flight.messages[0].token,
                                 [m.id for m in flight.messages])
            self._inflight.remove(flight)

    def _install_sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.stop()
        signal.signal(signal.SIGTERM, on_sigterm)
        return lambda: signal.signal(signal.SIGTERM, previous)


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
        # a full window is claimed; processfn then chooses what of it is emitted
        return self.select(claimed[:self.size])


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

    def _due_in(self):
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

    def _due_in(self):
        if self._last_read is None:
            return 0.0
        slot_end = self._last_read + datetime.timedelta(seconds=self.interval)
        return max(0.0, (slot_end - utcnow()).total_seconds())


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


def _sink_payload(result, window):
    # the seed's convention: the function's return value, or the window data when it returns nothing
    if result is None:
        return window.data
    if isinstance(result, Window):
        return result.data
    return result


def _summary(error):
    text = str(error).strip().splitlines()
    return text[-1] if text else repr(error)


def validate_emitter_class(emitter):
    if not (isinstance(emitter, type) and issubclass(emitter, WindowEmitter)):
        raise ConfigurationError(f'emitter must be a WindowEmitter subclass, got {emitter!r}')
    return emitter
