"""What the runner works with: the strategy it runs, and the windows it holds in flight.

:class:`Strategy` is the contract between the consumer loop
(:mod:`minibatch.runner`) and a window strategy: the hooks it calls and the
options it reads. :class:`minibatch.window.WindowEmitter` fulfils it.
:class:`InFlight` is a window running on the executor; the functions below
keep its lease (:func:`renew_leases`), settle it through a store outage
(:func:`retrying`), and stop what runs it past its timeout (:func:`stop_window`,
:func:`stop_flight`).
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Callable, ClassVar, Protocol

from minibatch.asyncio_executor import AsyncioExecutor
from minibatch.errors import InvalidMessage
from minibatch.executors import ThreadExecutor
from minibatch.groups import Membership
from minibatch.store.base import Message, Store

logger = logging.getLogger('minibatch.window')

#: a window function's future, as the executors return it
WindowFuture = concurrent.futures.Future[Any]


class Strategy(Protocol):
    """What the runner needs of the window strategy it runs: :class:`minibatch.window.WindowEmitter` is one.

    The hooks are the strategy's (see docs/windows.rst); the attributes are
    the consumer's options and its counters (``stats``).
    """
    MAX_POLL: ClassVar[float]
    MAX_PUSH_WAIT: ClassVar[float]
    STOP_GRACE: ClassVar[float]
    HEARTBEAT: ClassVar[float]
    STOP_CHECK: ClassVar[float]
    stream_name: str
    source_name: str
    emitfn: Callable[..., Any] | None
    executor_arg: Any
    workers: int | None
    concurrency: int | None
    queue: Any
    emit_empty: bool
    sink: Any
    lease: float
    max_attempts: int
    timeout: float | None
    stats: dict[str, int]
    consumer_id: str

    @property
    def stream(self) -> Any: ...

    @property
    def store(self) -> Store: ...

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]: ...

    @property
    def membership(self) -> Membership: ...

    def commits_output(self, sink: Any) -> bool: ...

    @property
    def stop_grace(self) -> float: ...

    def window_ready(self) -> tuple[bool, Any]: ...

    def query(self, *args: Any) -> Any: ...

    def process(self, qs: Any) -> list[Message]: ...

    def emit(self, qs: list[Message], query_args: Any = None) -> Any: ...

    def timestamp(self, *args: Any) -> Any: ...

    def commit(self, qs: list[Message], window: Any) -> None: ...

    def undo(self, qs: list[Message], window: Any = None, error: Any = None) -> None: ...

    def flush(self) -> None: ...

    def sleep(self) -> None: ...

    def due_in(self) -> float: ...


class InFlight:
    """A window submitted to the executor and not yet settled.

    ``deadline`` is the ``time.monotonic()`` past which it has timed out
    (``timeout=`` seconds after it was submitted), or None for no limit.
    """
    __slots__ = ('messages', 'window', 'future', 'renewed', 'executor', 'deadline', 'submitted')

    def __init__(self, messages: list[Message], window: Any, future: WindowFuture, executor: Any = None,
                 timeout: float | None = None, submitted: float | None = None):
        self.messages = messages
        self.window = window
        self.future = future
        self.executor = executor  # the pool it runs on, to tell a broken pool from its replacement
        self.renewed = time.monotonic()  # moves on with each lease renewal
        #: ``time.monotonic()`` when the window was handed to the executor (its duration is counted from it)
        self.submitted = self.renewed if submitted is None else submitted
        self.deadline = None if timeout is None else self.renewed + timeout

    @property
    def token(self) -> str | None:
        return self.messages[0].token if self.messages else None  # one claim token per window


def overdue(flights: list[InFlight], now: float) -> list[InFlight]:
    """The windows of ``flights`` still running past their deadline."""
    return [f for f in flights if f.deadline is not None and f.deadline <= now and not f.future.done()]


def next_deadline(flights: list[InFlight]) -> float:
    """The earliest deadline of ``flights`` still running (``time.monotonic()``), ``inf`` if none."""
    return min((f.deadline for f in flights if f.deadline is not None and not f.future.done()),
               default=float('inf'))


def renew_leases(store: Store, stream: str, lease: float, flights: list[InFlight]) -> None:
    """Renew the lease of each of ``flights`` last renewed more than a third of ``lease`` ago."""
    now = time.monotonic()
    for flight in flights:
        token = flight.token
        if now - flight.renewed > lease / 3 and token is not None:
            held = store.renew(stream, token, lease)
            flight.renewed = now
            if not held:
                logger.warning('minibatch: lost the lease of a running window on %r', stream)


def stop_window(executor: Any, future: concurrent.futures.Future[Any], owned: bool) -> tuple[str, bool]:
    """Stop what runs ``future`` (a window past its timeout, or still running after a stop's grace period).

    Returns what was done, for the window's error, and whether a whole process
    pool was killed (its other windows were interrupted too):

    - a process pool minibatch created (``owned``): all its workers are killed,
      since one dead worker breaks the pool anyway;
    - a :class:`ThreadExecutor`: the thread is abandoned and replaced;
    - anything else (an ``async def`` function's task, a queued call, an executor
      you passed in): ``future.cancel()``; what still runs is left to itself.
    """
    if owned and isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        for process in list((getattr(executor, '_processes', None) or {}).values()):
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        return 'its worker process was killed', True
    if isinstance(executor, ThreadExecutor) and executor.abandon(future):
        return 'its thread was abandoned (a thread cannot be killed) and replaced', False
    if future.cancel() and isinstance(executor, AsyncioExecutor):
        return 'its task was cancelled', False
    return 'it was abandoned (this executor cannot stop it)', False


def stop_flight(flights: list[InFlight], flight: InFlight, owned: bool,
                give_back: Callable[[list[Message]], None]) -> tuple[str, bool]:
    """Stop what runs ``flight`` (see :func:`stop_window`); return what was done, and whether
    its process pool was killed.

    A killed pool interrupts every window in it: those not finished are given
    back untouched (no attempt counted: they did nothing wrong) and removed
    from ``flights``; a new pool is the caller's to start.
    """
    detail, pool_killed = stop_window(flight.executor, flight.future, owned)
    if pool_killed:
        for other in list(flights):
            finished = other.future.done() and other.future.exception() is None  # settled as usual
            if other is not flight and other.executor is flight.executor and not finished:
                give_back(other.messages)
                flights.remove(other)
    return detail, pool_killed


def retrying(transient: tuple[type[BaseException], ...], lease: float, stream: str, fn: Callable[..., Any],
             *args: Any) -> Any:
    """Call ``fn(*args)``, retrying while the store raises ``transient`` errors, until a lease would have run out.

    Settling a window must survive a short outage; after the lease the messages
    are someone else's anyway (they will be delivered again), so this gives up
    and returns None.
    """
    deadline = time.monotonic() + lease
    delay = 0.1
    while True:
        try:
            return fn(*args)
        except transient as exc:
            if time.monotonic() > deadline:
                logger.error('minibatch: could not settle a window on %r (%s); its lease will expire and '
                             'it will be delivered again', stream, summary(exc))
                return None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def sink_payload(result: Any, window: Any) -> Any:
    """What the sink gets, the seed's convention: the function's return value, or the window data if None."""
    if result is None:
        return window.data
    if isinstance(result, type(window)):  # the function returned its (or a) window
        return result.data
    return result


def output_docs(payload: Any) -> list[dict[str, Any]]:
    """A window's result as the messages a stream sink appends: a dict is one, a list of dicts each.

    :raises InvalidMessage: anything else (the window then fails, saying what to return)
    """
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, (list, tuple)) and all(isinstance(doc, dict) for doc in payload):
        return list(payload)
    raise InvalidMessage(f'a stream sink appends what the function returns, which must be a dict or a list of '
                         f'dicts (or None: the window data); got {type(payload).__name__}')


def summary(error: Any) -> str:
    """The last line of an error or traceback text: what a log line needs."""
    text = str(error).strip().splitlines()
    return text[-1] if text else repr(error)


def still_held(store: Store, name: str, flight: InFlight, lease: float, stopping: bool) -> bool:
    """Whether the finished ``flight`` still holds its messages, checked where it may not: before its sink.

    Checked (one renewal, which also extends the claim) only when the consumer
    is stopping, or when the window ran past a whole lease since its last
    renewal: then its stream may have been cleared or deleted, or its lease may
    have run out and the messages gone to another consumer. A window that holds
    none of its messages any more must not forward a result nor be committed.
    """
    if not flight.messages or flight.token is None:
        return True
    if not stopping and time.monotonic() - flight.renewed < lease:
        return True
    if store.renew(name, flight.token, lease):
        return True
    logger.warning('minibatch: a window of %d messages on %r finished, but its messages are no longer held '
                   '(the lease ran out, or the stream was cleared or deleted meanwhile): its result is not '
                   'forwarded and it is not committed; messages still in the stream are delivered again',
                   len(flight.messages), name)
    return False
