"""How a consumer runs, in one place: :class:`ConsumerOptions`, validated once.

``@streaming``, ``make_emitter`` and every :class:`~minibatch.window.WindowEmitter`
take these keywords; the emitter builds one ``ConsumerOptions`` from them, so a
bad value is refused where the decorator is written, with one message per
option. A keyword no built-in strategy knows is refused too, naming the nearest
known one (``max_attemps`` -> ``max_attempts``); a custom emitter class receives
keywords it does not know in ``self.kwargs``, as in minibatch 0.6.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable

from minibatch.errors import ConfigurationError, InvalidWindowSpec
from minibatch.executors import check_executor
from minibatch.groups import check_options as check_group_options

#: keywords of @streaming / make_emitter that are not ConsumerOptions fields (the window, the stream,
#: running, and minibatch 0.6's names)
OTHER_KEYWORDS = frozenset({
    'name', 'fn', 'emitfn', 'size', 'interval', 'relaxed', 'emitter', 'source', 'blocking', 'url',
    'cnx_kwargs', 'stream', 'stream_url', 'stream_name', 'forwardfn', 'max_workers', 'max_window',
    # event-time windows (minibatch.eventtime): known, so that a typo of one is named with its nearest
    'window', 'key', 'time', 'grace', 'on_late', 'close_by_clock',
})


@dataclasses.dataclass
class ConsumerOptions:
    """The options of one consumer, checked on creation.

    :param processfn: ``fn(messages) -> messages`` applied to each claimed window;
        what it leaves out is committed at once
    :param executor: where functions run: ``'process'`` (default), ``'thread'``,
        ``'inline'``, an Executor class or instance, a Dask client or ``'dask://host:port'``
    :param workers: windows run at once (and pool size); default the number of CPUs
    :param keep: keep committed messages (state ``done``) instead of deleting them
    :param sink: object with ``put(data)``: gets the function's result, or the window data
    :param queue: a ``multiprocessing.Queue``; putting ``True`` on it stops the consumer
    :param emit_empty: call the function for empty time windows too
    :param max_attempts: deliveries of a message before it is dead-lettered (>= 1)
    :param lease: seconds a claim is held without renewal (> 0); renewed every third of it
    :param retry_backoff: seconds before the first retry of a failed window (>= 0);
        doubles per attempt, at most 60 s
    :param concurrency: for an ``async def`` function: windows awaiting at once on
        the consumer's event loop (default 100)
    :param isolate: split a failing window into halves, recursively, so that only the
        messages that fail alone count attempts and are dead-lettered (default False:
        a window keeps its size; see docs/reliability.rst)
    :param timeout: seconds a window's function may run (> 0, finite), or None (default: no limit);
        past it the window is a failed attempt, and its worker is stopped as the executor allows
        (see docs/reliability.rst, "Timeouts")
    :param stop_grace: seconds a stopping consumer waits for its windows in flight before it gives
        them back and stops their workers (>= 0); default the strategy's ``STOP_GRACE`` (30 s)
    :param group: the consumer group (docs/groups.rst): every group sees every message, consumers of
        one group share them; None (default) is the default group, the stream itself
    :param start: where a group new to the stream starts: ``'earliest'`` (every retained message,
        the default) or ``'latest'`` (only messages appended from then on)
    :raises InvalidWindowSpec: ``max_attempts``, ``lease`` or ``retry_backoff`` out of range
    :raises ConfigurationError: a bad ``executor``, ``workers``, ``sink``, ``isolate``, ``timeout``,
        ``stop_grace``, ``group`` or ``start``
    """
    processfn: Callable[..., Any] | None = None
    executor: Any = None
    workers: int | None = None
    keep: bool = False
    sink: Any = None
    queue: Any = None
    emit_empty: bool = False
    max_attempts: int = 3
    lease: float = 60.0
    retry_backoff: float = 1.0
    concurrency: int | None = None
    isolate: bool = False
    timeout: float | None = None
    stop_grace: float | None = None
    group: str | None = None
    start: str = 'earliest'

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidWindowSpec(f'max_attempts must be an integer >= 1, got {self.max_attempts!r}')
        # _is_number refuses NaN and infinity: NaN passes every comparison below unnoticed
        if not _is_number(self.lease) or self.lease <= 0:
            raise InvalidWindowSpec(f'lease must be a positive number of seconds, got {self.lease!r}')
        if not _is_number(self.retry_backoff) or self.retry_backoff < 0:
            raise InvalidWindowSpec(f'retry_backoff must be a number of seconds >= 0, got {self.retry_backoff!r}')
        self.lease = float(self.lease)
        self.retry_backoff = float(self.retry_backoff)
        if self.concurrency is not None and (isinstance(self.concurrency, bool)
                                             or not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise ConfigurationError(f'concurrency must be an integer >= 1, got {self.concurrency!r}')
        if not isinstance(self.isolate, bool):
            raise ConfigurationError(f'isolate must be True or False, got {self.isolate!r}')
        if self.timeout is not None:
            if not _is_number(self.timeout) or self.timeout <= 0:
                raise ConfigurationError(f'timeout must be a positive number of seconds, or None for no limit, '
                                         f'got {self.timeout!r}')
            self.timeout = float(self.timeout)
        if self.stop_grace is not None:
            if not _is_number(self.stop_grace) or self.stop_grace < 0:
                raise ConfigurationError(f'stop_grace must be a number of seconds >= 0, got {self.stop_grace!r}')
            self.stop_grace = float(self.stop_grace)
        self.group = check_group_options(self.group, self.start)
        check_executor(self.executor, self.workers)
        if self.sink is not None and not callable(getattr(self.sink, 'put', None)):
            raise ConfigurationError(f'sink must be an object with a put(data) method, got {self.sink!r}')
        if self.processfn is not None and not callable(self.processfn):
            raise ConfigurationError(f'processfn must be a function of the claimed messages, got {self.processfn!r}')

    @classmethod
    def known(cls) -> frozenset[str]:
        """Every keyword a built-in strategy understands."""
        return frozenset(f.name for f in dataclasses.fields(cls)) | OTHER_KEYWORDS


def refuse_unknown(options: dict[str, Any], where: str) -> None:
    """Raise ConfigurationError for the first keyword of ``options`` no built-in strategy knows.

    The message names it, and the nearest known keyword when one is close.
    """
    known = ConsumerOptions.known()
    for key in options:
        if key not in known:
            nearest = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f'; did you mean {nearest[0]}=?' if nearest else ''
            raise ConfigurationError(f'{where} does not know the option {key}={options[key]!r}{hint} '
                                     '(options a custom emitter class takes reach it with emitter=MyEmitter)')


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN, not infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float (the options are kept as floats)
        return False
