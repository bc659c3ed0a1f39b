"""Reading an event's key and event time from a message: the ``key=`` and ``time=`` of ``@streaming``.

Times become UTC epoch seconds (floats), the one unit the window logic and the
stores compare. A reader raises :class:`EventReadError` with the reason when a
message does not carry what it needs; the consumer dead-letters that message
with the reason and goes on with the others.
"""
from __future__ import annotations

import datetime
import json
import math
from json.encoder import encode_basestring_ascii
from typing import Any, Callable

from minibatch.errors import MinibatchError

_EPOCH = datetime.datetime(1970, 1, 1)


class EventReadError(MinibatchError, ValueError):
    """A message's key or event time cannot be read (missing field, a value that is not a time)."""


def field(data: Any, path: str) -> Any:
    """The value at the dotted ``path`` in the dict ``data``; EventReadError naming the part that is missing."""
    value = data
    for part in path.split('.'):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise EventReadError(f'the message has no field {path!r} (missing {part!r})')
    return value


def getter(path: str) -> Callable[[Any], Any]:
    """``fn(data)``: :func:`field` of ``path``, with a quick look-up first for a top-level field."""
    if '.' in path:
        return lambda data: field(data, path)

    def get(data: Any) -> Any:
        try:
            return data[path]
        except (KeyError, TypeError, IndexError):
            return field(data, path)  # not a dict holding it: field() says why, or reads a list index
    return get


def to_epoch(value: Any) -> float:
    """A datetime (naive = UTC), an ISO 8601 string (no offset = UTC) or epoch seconds as UTC epoch seconds."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return (value - _EPOCH).total_seconds()
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise EventReadError(f'{value[:60]!r} is not an ISO 8601 time') from None
        return to_epoch(parsed)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise EventReadError(f'{value!r} is not a time')
        return float(value)
    raise EventReadError(f'{value!r:.60} ({type(value).__name__}) is not a time: give a datetime, an ISO 8601 '
                         'string or epoch seconds')


def to_datetime(epoch: float) -> datetime.datetime:
    """Epoch seconds as a naive UTC datetime, as every time in minibatch."""
    return _EPOCH + datetime.timedelta(seconds=epoch)


def key_reader(key: Any) -> Callable[[Any], str]:
    """``fn(data) -> the key as JSON text`` (stored and compared as text); None: one key for the stream."""
    if key is None:
        return lambda data: 'null'
    if isinstance(key, str):
        get = getter(key)
        return lambda data: key_text(get(data))

    def call(data: Any) -> str:
        try:
            value = key(data)
        except Exception as exc:
            raise EventReadError(f'key function {key!r} failed: {type(exc).__name__}: {exc}') from exc
        return key_text(value)
    return call


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, default=str, separators=(',', ':'))


def key_text(value: Any) -> str:
    """The key as JSON text: sorted object keys, compact, anything else as ``str()`` (one encoder, made once)."""
    if type(value) is str:
        return encode_basestring_ascii(value)  # what the encoder makes of a str, without its call overhead
    return _KEY_ENCODER.encode(value)


def key_value(text: str) -> Any:
    """The key as the window function sees it (JSON read back: a tuple key is a list)."""
    return json.loads(text)


def time_reader(time: Any) -> Callable[[Any, datetime.datetime | None], float]:
    """``fn(data, created) -> UTC epoch seconds``; None reads the append time ``created``."""
    if time is None:
        def appended(data: Any, created: datetime.datetime | None) -> float:
            if created is None:
                raise EventReadError('the message has no append time')
            return to_epoch(created)
        return appended
    if isinstance(time, str):
        get = getter(time)
        return lambda data, created: _checked(to_epoch(get(data)), time)

    def call(data: Any, created: datetime.datetime | None) -> float:
        try:
            value = time(data)
        except Exception as exc:
            raise EventReadError(f'time function {time!r} failed: {type(exc).__name__}: {exc}') from exc
        return _checked(to_epoch(value), time)
    return call


def _checked(epoch: float, source: Any) -> float:
    # datetime.datetime's range: a time beyond it cannot be given to the function as a window bound
    if not -62135596800.0 <= epoch <= 253402300799.0:
        raise EventReadError(f'event time {epoch!r} from {source!r} is out of range')
    return epoch


def plain_reader(key: Any, time: Any, counting: bool = False) -> Callable[[Any], tuple[str, float] | None] | None:
    """``fn(data) -> (key as JSON text, event time)`` for the plain case, or None when there is no plain case.

    The plain case: ``key`` and ``time`` are field paths (``key`` may be None; with
    ``counting`` no time is read: 0.0) and the message holds, through dicts, a ``str``
    or ``int`` key and a number of epoch seconds in range. ``fn`` returns exactly what
    :func:`key_reader` and :func:`time_reader` return then, without their checks and
    calls, and None for any other message (a time that is a datetime or a string, a
    field missing, ...): the full readers read it, or say why it cannot be read.
    """
    if not (key is None or isinstance(key, str)) or not (counting or isinstance(time, str)):
        return None
    key_parts = None if key is None else key.split('.')
    time_parts = None if counting else str(time).split('.')

    def at(data: Any, parts: list[str]) -> Any:
        for part in parts:
            if type(data) is not dict or part not in data:
                return _MISSING
            data = data[part]
        return data

    def read(data: Any) -> tuple[str, float] | None:
        if key_parts is None:
            text = 'null'
        else:
            value = at(data, key_parts)
            if type(value) is str:
                text = encode_basestring_ascii(value)
            elif type(value) is int:
                text = str(value)
            else:
                return None
        if time_parts is None:
            return text, 0.0
        t = at(data, time_parts)
        # NaN fails the range test: the full reader says why it is not a time
        if (type(t) is float or type(t) is int) and -62135596800.0 <= t <= 253402300799.0:
            return text, float(t)
        return None
    return read


_MISSING = object()
