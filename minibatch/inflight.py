"""What the runner works with: the strategy it runs, and the windows it holds in flight.

:class:`Strategy` is the contract between the consumer loop
(:mod:`minibatch.runner`) and a window strategy: the hooks it calls and the
options it reads. :class:`minibatch.window.WindowEmitter` fulfils it.
"""
from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, ClassVar, Protocol

from minibatch.store.base import Message, Store

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
    def stop_grace(self) -> float: ...

    def window_ready(self) -> tuple[bool, Any]: ...

    def query(self, *args: Any) -> Any: ...

    def process(self, qs: Any) -> list[Message]: ...

    def emit(self, qs: list[Message], query_args: Any = None) -> Any: ...

    def timestamp(self, *args: Any) -> Any: ...

    def commit(self, qs: list[Message], window: Any) -> None: ...

    def undo(self, qs: list[Message], window: Any = None, error: Any = None) -> None: ...

    def sleep(self) -> None: ...

    def due_in(self) -> float: ...


class InFlight:
    """A window submitted to the executor and not yet settled.

    ``deadline`` is the ``time.monotonic()`` past which it has timed out
    (``timeout=`` seconds after it was submitted), or None for no limit.
    """
    __slots__ = ('messages', 'window', 'future', 'renewed', 'executor', 'deadline')

    def __init__(self, messages: list[Message], window: Any, future: WindowFuture, executor: Any = None,
                 timeout: float | None = None):
        self.messages = messages
        self.window = window
        self.future = future
        self.executor = executor  # the pool it runs on, to tell a broken pool from its replacement
        self.renewed = time.monotonic()
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


def sink_payload(result: Any, window: Any) -> Any:
    """What the sink gets, the seed's convention: the function's return value, or the window data if None."""
    if result is None:
        return window.data
    if isinstance(result, type(window)):  # the function returned its (or a) window
        return result.data
    return result


def summary(error: Any) -> str:
    """The last line of an error or traceback text: what a log line needs."""
    text = str(error).strip().splitlines()
    return text[-1] if text else repr(error)
