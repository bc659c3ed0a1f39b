"""The consumer loop: runs a window strategy (a WindowEmitter) until it is asked to stop.

The strategy decides *when* to cut a window and *which* messages go into it
(``window_ready``/``query``/``process``), and what success and failure mean for
them (``commit``/``undo``). The runner does everything around that:

- the executor the window functions run on, and the windows in flight on it,
  never more than it has workers (backpressure);
- each in-flight window's lease, renewed while its function runs, and the
  window settled exactly once: committed, undone, or given back untouched;
- waiting between rounds without querying the store (its waiter wakes us on
  an append), for a due retry or for the strategy's next deadline (``due_in``);
- finding leases other consumers left behind (``expire_leases``), retention,
  heartbeats for ``stream.stats()``;
- ``timeout=``: a window running past it is a failed attempt, and what runs it
  is stopped as far as the executor allows (:func:`minibatch.inflight.stop_window`);
- stopping: ``stop()``, ``True`` on the queue, SIGTERM or Ctrl-C end the loop
  after the windows in flight finish (or are given back after the stop grace,
  their workers stopped so that the process can exit).

One round (:meth:`Runner.round`) settles finished windows, keeps leases alive
and cuts at most one new window. ``emitter.run()`` is the front door.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue as queue_module
import signal
import threading
import time
import traceback
from typing import Any, Callable

from minibatch import retention
from minibatch.asyncio_executor import DEFAULT_CONCURRENCY, AsyncioExecutor, RunCoroutine, WindowExit, is_async
from minibatch.executors import Alarm, LocalExecutor, SendableErrors, WindowTimeout, make_executor
from minibatch.marshaller import marshal
from minibatch.report import Reporter
from minibatch.inflight import (InFlight, Strategy, WindowFuture, next_deadline, overdue, renew_leases, retrying,
                                output_docs, sink_payload, still_held, stop_flight, stop_window, summary)
from minibatch.store.base import Message, Store, utcnow

logger = logging.getLogger('minibatch.window')


class Runner:
    """Runs one emitter's rounds; owns its executor, in-flight windows, waiter and heartbeats.

    Timing settings are read from the emitter's class (``MAX_POLL``,
    ``MAX_PUSH_WAIT``, ``HEARTBEAT``, ``STOP_CHECK``; ``STOP_GRACE`` unless
    ``stop_grace=`` was given), so a strategy (or a test) can change them where
    users configure consumers.
    """

    def __init__(self, emitter: Strategy):
        self.em = emitter
        self.executor: Any = None
        self.capacity = 0
        self.inflight: list[InFlight] = []
        self.waiter: Any = None
        self.stop_event = threading.Event()
        self._owns_executor = False
        self._call: Callable[..., Any] | None = None
        self._idle = 0.01
        self._next_expiry = 0.0
        self._next_housekeeping = 0.0
        self._isolating = 0  # windows still to run alone after a worker crash (see reap)
        self._started: Any = None  # a naive UTC datetime once running (utcnow())
        self._next_heartbeat: float | None = None  # None: no heartbeats (run(blocking=False))
        self.reporter = Reporter()  # what the heartbeats report: counts, rate, window durations

    @property
    def store(self) -> Store:
        return self.em.store

    @property
    def name(self) -> str:
        return str(self.em.stream_name)

    # -- resources --------------------------------------------------------
    def setup(self, waiter: bool = True) -> None:
        """Start the executor (and the store's waiter) unless running. Raises what the executor raises."""
        if self.executor is None:
            em = self.em
            emitfn, executor, workers = em.emitfn, em.executor_arg, em.workers
            coroutine = emitfn is not None and is_async(emitfn)
            if coroutine and executor is None:
                # async def: an event loop in this process, many windows awaiting at once
                executor, workers = 'async', em.concurrency or DEFAULT_CONCURRENCY
            plan = make_executor(executor, workers)
            self.executor, self.capacity, self._owns_executor = plan.executor, plan.capacity, plan.owned
            call = marshal(emitfn) if (plan.ships_functions and emitfn) else emitfn
            if coroutine and call is not None and not isinstance(plan.executor, AsyncioExecutor):
                call = RunCoroutine(call)  # another executor was asked for: each call runs its own loop
            if call is not None and plan.ships_functions:
                call = SendableErrors(call)
            if call is not None and em.timeout is not None and isinstance(plan.executor, LocalExecutor):
                call = Alarm(call, em.timeout)  # the only way to interrupt a function in our own thread
            self._call = call
        if waiter and self.waiter is None:
            # a group's consumers wake for appends to the stream itself, not to their copies
            self.waiter = self.store.waiter(getattr(self.em, 'source_name', self.name))

    def teardown(self) -> None:
        """Close the waiter and shut down an executor minibatch created. Idempotent."""
        if self.waiter is not None:
            self.waiter.close()
            self.waiter = None
        if self.executor is not None and self._owns_executor:
            self.executor.shutdown(wait=True)
        self.executor = None

    # -- the loop ---------------------------------------------------------
    def run(self, blocking: bool = True) -> None:
        """Rounds until stopped; with ``blocking=False`` one round, and wait for its window to settle."""
        if not blocking:
            # one round, no wake-up watcher; the pool stays for the next round (see emitter.close())
            self.setup(waiter=False)
            self.round()
            self.drain(timeout=None)
            return
        if not self._start():
            return
        restore = self._install_sigterm()
        self._started = utcnow()
        self._next_heartbeat = 0.0  # report at once, then every HEARTBEAT seconds
        try:
            while not self.should_stop():
                try:
                    worked = self.round()
                    if not worked:
                        self.em.flush()  # commits waiting for the next claim (commit_soon): none comes now
                except self.store.transient_errors as exc:
                    logger.warning('minibatch: store unavailable (%s); retrying', summary(exc))
                    self.stop_event.wait(min(self._idle * 4, 2.0))
                    self._idle = min(self._idle * 2, self.em.MAX_POLL)
                    continue
                if not worked:
                    self.em.sleep()
        except KeyboardInterrupt:
            logger.info('minibatch: interrupted; finishing in-flight windows of %r', self.name)
        finally:
            try:
                self.drain(timeout=self.em.stop_grace)
                self.heartbeat(state='stopped')
            finally:
                if restore:
                    restore()
                self.teardown()

    def _start(self) -> bool:
        """:meth:`setup`, waiting out a store that is briefly unreachable, as rounds do; False if stopped meanwhile.

        A consumer started while its server restarts (the connection reset in the
        middle of its first commands) must not die: it retries, backing off to 2 s.
        Other errors (a server that cannot be reached at all: StoreUnavailable) are raised.
        """
        pause = 0.05
        while True:
            try:
                self.setup()
                return True
            except Exception as exc:
                if not isinstance(exc, self.em.transient_errors):
                    raise
                logger.warning('minibatch: store unavailable while starting (%s); retrying', summary(exc))
            if self.stop_event.wait(pause) or self.should_stop():
                self.teardown()
                return False
            pause = min(pause * 2, 2.0)

    def should_stop(self) -> bool:
        """True once a stop was asked: ``stop()``, SIGTERM, or ``True`` put on the emitter's queue."""
        if self.stop_event.is_set():
            return True
        if self.em.queue is not None:
            try:
                if self.em.queue.get_nowait() is True:
                    self.stop_event.set()
            except queue_module.Empty:
                pass
            except (EOFError, OSError):  # the queue's other end is gone: nobody can stop us any more
                self.em.queue = None
        return self.stop_event.is_set()

    def round(self) -> bool:
        """Settle finished windows, keep leases alive, cut at most one new window. True if one was cut."""
        self.reap()
        self.maintain()
        capacity = 1 if self._isolating else self.capacity
        if len(self.inflight) >= capacity or self.stop_event.is_set():
            return False
        em = self.em
        membership = em.membership
        if not membership.joined:
            membership.join()
        membership.refill()
        ready, args = em.window_ready()
        if not ready:
            membership.starved()
            return False
        messages = em.process(em.query(*(args or ())))
        if not messages and not em.emit_empty:
            membership.starved()
            return False
        em.emit(messages)
        em.timestamp(*(args or ()))
        self._idle = 0.01
        return True

    # -- windows in flight ------------------------------------------------
    def submit(self, messages: list[Message], window: Any) -> WindowFuture:
        """Run the emitter's function on ``window`` and hold ``messages`` until it settles.

        If the function cannot even be started (pool broken twice, Ctrl-C in an
        inline function), the messages are given back at once, without
        counting an attempt, and the error is raised.
        """
        if self.executor is None:
            self.setup(waiter=False)
        started = time.monotonic()  # before submit: an inline function has run when it returns
        if self.em.emitfn is None:
            future: WindowFuture = concurrent.futures.Future()
            future.set_result(None)
        else:
            try:
                try:
                    future = self.executor.submit(self._call, window)
                except concurrent.futures.BrokenExecutor:
                    # a worker died since the last round; its windows are settled by reap()
                    self._replace_broken_executor()
                    future = self.executor.submit(self._call, window)
            except BaseException:
                self.give_back(messages)
                raise
        self.inflight.append(InFlight(messages, window, future, self.executor, self.em.timeout, started))
        return future

    def give_back(self, messages: list[Message]) -> None:
        """Make claimed ``messages`` available again, untouched (no attempt counted)."""
        if messages:
            self.settle_call(self.store.unclaim, self.name, messages[0].token, [m.id for m in messages])

    def reap(self) -> None:
        """Settle every window whose function has finished."""
        done = [f for f in self.inflight if f.future.done()]
        # cancelled: left behind in a pool we replaced; broken: its pool lost a worker
        broken = [f for f in done if f.future.cancelled()
                  or isinstance(f.future.exception(), concurrent.futures.BrokenExecutor)]
        if any(flight.executor is self.executor for flight in broken):
            self._replace_broken_executor()
        if len(broken) > 1 or (broken and self.stop_event.is_set()):
            # a dead worker fails every window of its pool, and which one killed it is
            # unknown: give them all back without counting an attempt, and run the next
            # windows one at a time, so that a repeat crash points at its culprit. When
            # stopping, the workers most likely got the same SIGTERM as we did (systemd
            # signals the whole group): nobody's fault either
            for flight in broken:
                self.give_back(flight.messages)
                self.inflight.remove(flight)
            self._isolating = max(self._isolating, len(broken))
            done = [f for f in done if f not in broken]
        for flight in done:
            self.settle(flight)
        for flight in overdue(self.inflight, time.monotonic()):
            if flight in self.inflight:  # (not given back with a pool killed for an earlier one)
                self.time_out(flight)

    def time_out(self, flight: InFlight) -> None:
        """``flight`` ran past its ``timeout=``: stop what runs it (:func:`stop_flight`); fail it (an attempt)."""
        detail, pool_killed = stop_flight(self.inflight, flight, self._owns_executor, self.give_back)
        if pool_killed and flight.executor is self.executor:
            self._replace_broken_executor('the workers were killed to stop a window that timed out')
        self.inflight.remove(flight)
        timeout = self.em.timeout or 0.0
        logger.warning('minibatch: a window of %d messages on %r timed out after %gs; %s', len(flight.messages),
                       self.name, timeout, detail)
        self.settle_call(self.em.undo, flight.messages, flight.window,
                         f'{WindowTimeout.__name__}: {WindowTimeout(timeout, detail)}')

    def settle(self, flight: InFlight) -> None:
        """Commit a finished window (and put its result to the sink), or undo it when it failed."""
        if self._isolating:
            self._isolating -= 1
        em = self.em
        self.reporter.durations.add(time.monotonic() - flight.submitted)
        try:
            try:
                result = flight.future.result()
            except KeyboardInterrupt as exc:  # the function's own: workers never get Ctrl-C (inline: see submit)
                raise WindowExit(None, 'the window function raised KeyboardInterrupt') from exc
            if not self.settle_call(still_held, self.store, self.name, flight, em.lease, self.stop_event.is_set()):
                self.inflight.remove(flight)  # another consumer's now, or gone: neither forwarded nor committed
                return
            if em.sink is not None:
                payload = sink_payload(result, flight.window)
                if flight.window is not None and em.commits_output(em.sink):
                    # a stream of the same store: appended by the commit itself, exactly once (docs/groups.rst)
                    flight.window._output = (em.sink.name, output_docs(payload))
                else:
                    em.sink.put(payload)
        except KeyboardInterrupt:  # Ctrl-C while the sink ran, here in the consumer's thread
            raise
        except BaseException as exc:  # SystemExit from the function too: a failed attempt, not the consumer's end
            if isinstance(exc, concurrent.futures.BrokenExecutor):
                error = (f'{type(exc).__name__}: the worker process died while running this window '
                         f'(killed, out of memory or crashed): {exc}')
                if flight.window is not None:  # not split by isolate=True: reap() isolates crashes
                    flight.window._worker_died = True
            else:
                error = ''.join(traceback.format_exception(exc))[-4000:]
            self.settle_call(em.undo, flight.messages, flight.window, error)
        else:
            self.settle_call(em.commit, flight.messages, flight.window)
        self.inflight.remove(flight)

    def settle_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)``, retrying while the store is unreachable, for up to a lease (see :func:`retrying`)."""
        return retrying(self.store.transient_errors, self.em.lease, self.name, fn, *args)

    def retry_due_in(self, seconds: float) -> None:
        """A window of ours was released for a retry in ``seconds``: look for it then, not at the next expiry."""
        self._next_expiry = min(self._next_expiry, time.monotonic() + seconds)

    def _replace_broken_executor(self, why: str = 'a worker process died') -> None:
        # a pool that lost a worker refuses all further work; start a fresh one
        # (only ours: an executor the user passed in is theirs to manage)
        if not self._owns_executor or self.executor is None:
            return
        logger.error('minibatch: %s in the pool of %r; starting a new pool', why, self.name)
        old, self.executor = self.executor, None
        old.shutdown(wait=False, cancel_futures=True)
        self.setup(waiter=False)

    def renew_leases(self) -> None:
        """Renew the lease of every in-flight window every third of the lease."""
        renew_leases(self.store, self.name, self.em.lease, self.inflight)

    def maintain(self) -> None:
        """Periodic work of a round: leases, expired claims of others, retention, heartbeats."""
        self.renew_leases()
        now = time.monotonic()
        em = self.em
        if now >= self._next_expiry:
            self.store.expire_leases(self.name, max_attempts=em.max_attempts)
            # expired leases (a consumer died) need not be found within a second; a due
            # retry of our own is scheduled by retry_due_in(). An idle consumer stays cheap.
            self._next_expiry = now + max(0.2, min(em.lease / 4, 5.0))
            em.membership.upkeep()
        if now >= self._next_housekeeping:
            if em.stream.max_age:
                retention.expire(self.store, self.name, em.stream.max_age)
            self._next_housekeeping = now + 60.0
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self.heartbeat()
            self._next_heartbeat = now + em.HEARTBEAT

    def drain(self, timeout: float | None) -> None:
        """Settle in-flight windows: wait for them up to ``timeout``, then give the rest back."""
        lease = self.em.lease
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.inflight:
            remaining = lease / 3 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            # wake at least every third of the lease (a long window keeps its claim while we
            # wait), and at the first window's timeout
            until_deadline = max(0.001, next_deadline(self.inflight) - time.monotonic())
            concurrent.futures.wait([f.future for f in self.inflight],
                                    timeout=min(remaining, lease / 3, until_deadline),
                                    return_when=concurrent.futures.FIRST_COMPLETED)
            self.reap()
            try:
                self.renew_leases()
            except self.store.transient_errors as exc:
                logger.warning('minibatch: could not renew leases (%s); retrying', summary(exc))
        for flight in list(self.inflight):
            # still running after the grace period: hand the messages back untouched, and stop
            # what runs them, or the pool's shutdown (and the process's exit) would wait for ever
            self.give_back(flight.messages)
            self.inflight.remove(flight)
            stop_window(flight.executor, flight.future, self._owns_executor)
        self.settle_call(self.em.flush)  # the commits left for a next claim (commit_soon)

    # -- waiting ----------------------------------------------------------
    def wait(self) -> None:
        """Wait before the next round: until a function finishes, a message arrives, or a poll is due.

        Costs no store queries: the waiter watches for appends (change stream,
        file changes) while running windows are checked in between.
        """
        em = self.em
        timeout = self._next_timeout()
        futures = [flight.future for flight in self.inflight]
        if futures and len(futures) >= self.capacity:
            concurrent.futures.wait(futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
            return
        if self.waiter is None:  # a round run by hand (run(blocking=False)): nothing to be woken by
            self.stop_event.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.waiter.wait(min(remaining, 0.02 if futures else em.STOP_CHECK)):
                # a waiter that sees every change will wake us again: no follow-up polls needed
                self._idle = em.MAX_PUSH_WAIT if self.waiter.sees_all_changes else 0.01
                return
            if any(future.done() for future in futures) or self.stop_event.is_set():
                return
            if time.monotonic() >= deadline:
                break
        cap = em.MAX_PUSH_WAIT if self.waiter.supported else em.MAX_POLL
        self._idle = min(self._idle * 2, cap)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        heartbeat = float('inf') if self._next_heartbeat is None else self._next_heartbeat - now
        return max(0.001, min(self._idle, self._next_expiry - now, self.em.due_in(), heartbeat,
                              next_deadline(self.inflight) - now))

    # -- reporting and signals ----------------------------------------------
    def heartbeat(self, state: str = 'running') -> None:
        """Report this consumer's figures to the store (see minibatch.status); best effort."""
        if self._next_heartbeat is None:
            return
        info = self.reporter.report(self.em.stats, state, self._started, self.em.HEARTBEAT, len(self.inflight))
        try:
            self.store.heartbeat(self.name, self.em.consumer_id, info)
        except self.store.transient_errors as exc:
            logger.debug('minibatch: heartbeat of %r skipped: %s', self.name, exc)

    def _install_sigterm(self) -> Callable[[], Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.stop_event.set()
        signal.signal(signal.SIGTERM, on_sigterm)
        return lambda: signal.signal(signal.SIGTERM, previous)
