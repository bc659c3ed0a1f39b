"""Event-time window specs: what ``tumbling()``, ``hopping()`` and ``session()`` return, validated.

A spec is a small frozen value (as bytewax's ``windowing`` configs are): it
says how events are grouped into windows by their event time, nothing more.
:class:`EventTimeSpec` adds what a consumer needs around it (key, time, grace,
what to do with late events) and the id under which its state is kept in the
store, shared by every process running the same decorated function.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
from typing import Any, Callable, Union

from minibatch.errors import ConfigurationError, InvalidWindowSpec

#: what a late event may become: dead letters, a late window, counted and dropped
ON_LATE = ('dead', 'window', 'drop')


def seconds(value: Any, what: str) -> float:
    """``value`` (seconds or a ``timedelta``) as a float > 0; InvalidWindowSpec naming ``what`` otherwise."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidWindowSpec(f'{what} must be a number of seconds > 0 or a timedelta, got {value!r}')
    return float(value)


class _Spec:
    """A window spec's text, e.g. ``hopping(60, 10)``: part of the id its consumers' state is kept under."""

    def describe(self) -> str:
        values = ', '.join(f'{getattr(self, f.name):g}' for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return f'{type(self).__name__.lower()}({values})'


@dataclasses.dataclass(frozen=True)
class Tumbling(_Spec):
    """Windows of ``size`` seconds, one after the other, aligned to the Unix epoch (``[k*size, (k+1)*size)``)."""
    size: float


@dataclasses.dataclass(frozen=True)
class Hopping(_Spec):
    """Windows of ``size`` seconds starting every ``step`` seconds (at multiples of ``step``); they overlap."""
    size: float
    step: float


@dataclasses.dataclass(frozen=True)
class Session(_Spec):
    """Per key, a window from its first event to its last event plus ``gap``; a pause of ``gap`` ends it."""
    gap: float


@dataclasses.dataclass(frozen=True)
class Count(_Spec):
    """Per key, windows of ``size`` messages in the order they were appended (``size=N, key=...``)."""
    size: int


WindowSpec = Union[Tumbling, Hopping, Session, Count]


def tumbling(size: float | datetime.timedelta) -> Tumbling:
    """Tumbling windows of ``size`` seconds (or a ``timedelta``), aligned to the epoch.

    :raises InvalidWindowSpec: ``size`` is not a positive number of seconds
    """
    return Tumbling(seconds(size, 'tumbling(size)'))


def hopping(size: float | datetime.timedelta, step: float | datetime.timedelta) -> Hopping:
    """Hopping windows of ``size`` seconds every ``step`` seconds; an event is in every window that covers it.

    :raises InvalidWindowSpec: a size or step that is not positive, or ``step > size`` (events between
        windows would belong to none; use tumbling windows and drop what you do not need instead)
    """
    size_s, step_s = seconds(size, 'hopping(size)'), seconds(step, 'hopping(step)')
    if step_s > size_s:
        raise InvalidWindowSpec(f'hopping(size={size_s:g}, step={step_s:g}): step must not exceed size, '
                                'or events between two windows would belong to none')
    return Hopping(size_s, step_s)


def session(gap: float | datetime.timedelta) -> Session:
    """Session windows: a key's session ends when it has no event for ``gap`` seconds of event time.

    :raises InvalidWindowSpec: ``gap`` is not a positive number of seconds
    """
    return Session(seconds(gap, 'session(gap)'))


def count(size: int) -> Count:
    """Count windows per key: each key's messages, ``size`` at a time, in append order.

    :raises InvalidWindowSpec: ``size`` is not an integer >= 1
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidWindowSpec(f'size must be an integer >= 1, got {size!r}')
    return Count(size)


def _name_of(reader: Any) -> str:
    if reader is None or isinstance(reader, str):
        return repr(reader)
    return f'{getattr(reader, "__module__", "?")}.{getattr(reader, "__qualname__", type(reader).__name__)}'


@dataclasses.dataclass(frozen=True)
class EventTimeSpec:
    """A consumer's event-time windowing, checked on creation.

    :param window: :func:`tumbling`, :func:`hopping` or :func:`session`
    :param key: a field name (dotted path allowed), a callable ``fn(message) -> key``, or None (one key)
    :param time: a field name, a callable, or None (the time the message was appended)
    :param grace: seconds (or a timedelta, >= 0) the watermark lags behind the latest event time
    :param on_late: ``'dead'``, ``'window'``, ``'drop'`` or a callable ``fn(window)``
    :param close_by_clock: close windows by the wall clock too, ``grace`` after their end (turn off to
        replay history whose event times are far from now)
    :raises InvalidWindowSpec: a bad window or grace
    :raises ConfigurationError: a bad key, time or on_late
    """
    window: WindowSpec
    key: Any = None
    time: Any = None
    grace: float = 0.0
    on_late: Any = 'dead'
    close_by_clock: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.window, (Tumbling, Hopping, Session, Count)):
            raise InvalidWindowSpec(f'window= must be tumbling(size), hopping(size, step) or session(gap), '
                                    f'got {self.window!r}')
        grace = self.grace.total_seconds() if isinstance(self.grace, datetime.timedelta) else self.grace
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
            raise InvalidWindowSpec(f'grace must be a number of seconds >= 0 or a timedelta, got {self.grace!r}')
        object.__setattr__(self, 'grace', float(grace))
        for name in ('key', 'time'):
            value = getattr(self, name)
            if value is not None and not callable(value) and not (isinstance(value, str) and value):
                raise ConfigurationError(f'{name}= must be a field name (a non-empty string, dots for nested '
                                         f'fields), a function of the message, or None; got {value!r}')
        if not callable(self.on_late) and self.on_late not in ON_LATE:
            raise ConfigurationError(f"on_late= must be one of {', '.join(map(repr, ON_LATE))} or a function "
                                     f'of the late window, got {self.on_late!r}')
        if not isinstance(self.close_by_clock, bool):
            raise ConfigurationError(f'close_by_clock= must be True or False, got {self.close_by_clock!r}')
        if isinstance(self.window, Count):
            if self.key is None:
                raise ConfigurationError('count windows per key need key=')
            if self.time is not None or self.grace or self.on_late != 'dead':
                raise ConfigurationError('time=, grace= and on_late= are for windows by event time; count windows '
                                         'per key (size=N, key=...) follow the append order and are never late')

    def describe(self, stream: str) -> str:
        """The spec in words: what identifies the consumer's window state in the store."""
        return (f'{stream} {self.window.describe()} key={_name_of(self.key)} time={_name_of(self.time)} '
                f'grace={self.grace:g}')

    def spec_id(self, stream: str) -> str:
        """A short, stable id of :meth:`describe`: the same decorated function shares its state everywhere."""
        return hashlib.sha1(self.describe(stream).encode()).hexdigest()[:20]


Reader = Callable[[Any], Any]
