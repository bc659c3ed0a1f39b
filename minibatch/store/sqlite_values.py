"""How the embedded store writes values: JSON text, epoch seconds, and rows back into records.

Messages are JSON text in SQLite; datetimes in them are tagged (``{"$date": ...}``)
so that they come back as datetimes. User data never looks like a tag: a user
key ``$date``, or any key starting with ``$$``, is written with one more ``$``
in front and read back without it. A message is checked before its batch is
written (:func:`serialise`), so a bad one writes nothing; one that cannot be
decoded when read (:func:`decode`) is reported, not raised, so that the store
can dead-letter it and deliver the rest. Times are float epoch
seconds in the file and naive UTC datetimes in the contract.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, overload

from minibatch.errors import ConfigurationError, InvalidMessage
from minibatch.store.base import AVAILABLE, Doc, Message, RecordId, StreamInfo
from minibatch.store.records import shape_problem

STREAM_FIELDS = ('created', 'last_read', 'interval', 'closed', 'max_age', 'status')
STREAM_COLUMNS = 'name, ' + ', '.join(STREAM_FIELDS)
MESSAGE_COLUMNS = 'id, stream, created, data, state, attempts, error'
#: what find_available reads: the rest is the same for every available message of a stream
AVAILABLE_COLUMNS = 'id, created, data, attempts, error'


def to_epoch(value: datetime.datetime | float | None) -> float | None:
    """Naive-UTC datetime (or aware datetime, or epoch number) -> float epoch seconds."""
    if value is None or isinstance(value, (int, float)):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


# (epoch, datetime) of the last conversion: a batch shares one timestamp
_last_datetime: tuple[float | None, datetime.datetime | None] = (None, None)


@overload
def to_datetime(value: float) -> datetime.datetime: ...


@overload
def to_datetime(value: None) -> None: ...


def to_datetime(value: float | None) -> datetime.datetime | None:
    """Float epoch seconds -> naive UTC datetime (microsecond precision, as written)."""
    global _last_datetime
    if value is None:
        return None
    last = _last_datetime  # one read of an immutable pair: safe across threads
    if value == last[0]:
        return last[1]
    converted = _recent.get(value)
    if converted is None:
        converted = datetime.datetime.fromtimestamp(value, datetime.timezone.utc).replace(tzinfo=None)
        if len(_recent) >= RECENT_DATETIMES:
            _recent.clear()
        _recent[value] = converted
    _last_datetime = (value, converted)
    return converted


#: epoch -> datetime of recent conversions: a window of keyed events holds messages of many batches (each
#: batch shares one time), read in turn by the windows of every key. Cleared when full (dict operations
#: are atomic: safe across threads).
RECENT_DATETIMES = 4096
_recent: dict[float, datetime.datetime] = {}


def _encode_default(value: object) -> dict[str, str]:
    # datetimes are tagged so that they come back as datetimes, not strings
    if isinstance(value, (datetime.datetime, datetime.date)):
        return {'$date': value.isoformat()}
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _escaped_key(key: Any) -> Any:
    # a user key that could be read as our tag gets one more '$' (removed again by _decode_hook)
    if type(key) is str and (key == '$date' or key.startswith('$$')):
        return '$' + key
    return key


def _escape(value: Any) -> Any:
    """A copy of ``value`` with the user keys that look like a tag escaped (see the module doc)."""
    if isinstance(value, dict):
        return {_escaped_key(key): _escape(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(item) for item in value]
    return value


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get('$date'), str):
        text = obj['$date']
        try:
            if 'T' in text:
                return datetime.datetime.fromisoformat(text)
            return datetime.date.fromisoformat(text)
        except ValueError:
            pass  # written before user keys were escaped, by a user: keep it as it is
    if any(key.startswith('$$') for key in obj):
        return {key[1:] if key.startswith('$$') else key: item for key, item in obj.items()}
    return obj


# made once: json.dumps() with options builds a new encoder on every call
_encoder = json.JSONEncoder(default=_encode_default, separators=(',', ':'))
_decoder = json.JSONDecoder(object_hook=_decode_hook)


def _tagged(text: str) -> bool:
    """True if JSON ``text`` may hold a tag or an escaped key: a string token "$date" or one starting with "$$".

    Inside a string a quote is written \\", so these are found only at the start of a string (or
    after an escaped quote: a false alarm, which costs the slow path and nothing else).
    """
    return '"$date"' in text or '"$$' in text


def dumps(value: object) -> str:
    text = _encoder.encode(value)
    if _tagged(text):  # a datetime, or a user key to escape: the rare, slower path
        text = _encoder.encode(_escape(value))
    return text


_plain_decoder = json.JSONDecoder()


def loads(text: str) -> Any:
    # the object hook costs a Python call per dict: skip it when no tag can be inside
    return (_decoder if _tagged(text) else _plain_decoder).decode(text)


def decode(text: str) -> tuple[Any, str | None]:
    """``(value, None)`` for stored JSON ``text``, or ``(None, why)`` when it cannot be decoded.

    Data written by this version never fails (:func:`serialise` refuses what
    could not be read back), but a file written otherwise may hold what cannot
    be read (nesting too deep for the decoder, say): one such message must not
    stop the others.
    """
    try:
        return loads(text), None
    except (RecursionError, ValueError, MemoryError) as exc:
        return None, f'the stored message cannot be decoded: {type(exc).__name__}: {exc}'[:500]


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _is_plain(value: dict[Any, Any] | list[Any], depth: int = 0) -> bool:
    """Fast path of the check below: True if ``value`` (a dict or list) surely round-trips through JSON.

    Exact types only and a depth bound; anything unusual (subclasses, dates,
    deep or circular data) returns False and gets the thorough check.
    """
    if depth > 32:
        return False
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind not in _PLAIN and not ((kind is dict or kind is list) and _is_plain(item, depth + 1)):
                return False
        return True
    for item in value:
        kind = type(item)
        if kind not in _PLAIN and not ((kind is dict or kind is list) and _is_plain(item, depth + 1)):
            return False
    return True


def _json_problem(container: object, key: object, item: object, path: str) -> tuple[str, str] | None:
    """(where, why) if JSON cannot carry ``container[key]`` faithfully, else None."""
    # JSON would silently turn a non-str key into a str: refuse rather than alter the data
    if isinstance(container, dict) and not isinstance(key, str):
        return f'{path} key {key!r}', f'keys must be str, not {type(key).__name__}'
    if not isinstance(item, (dict, list, tuple, str, int, float, type(None), datetime.date)):
        return f'{path}[{key!r}] = {item!r}', f'{type(item).__name__} is not serialisable'
    return None


def serialise(doc: object, index: int) -> str:
    """JSON text of message ``doc`` (number ``index`` of its batch), or InvalidMessage saying why not."""
    if not isinstance(doc, dict):
        raise InvalidMessage(f'message #{index} is not a dict: {doc!r} ({type(doc).__name__})')
    if type(doc) is dict and _is_plain(doc):
        return dumps(doc)
    found = shape_problem(doc, 'message', _json_problem)
    if found:
        where, why = found
        raise InvalidMessage(f'message #{index} cannot be stored: {where} ({why})')
    return dumps(doc)



def message_of(row: Sequence[Any], data: Doc | None = None) -> Message:
    """The message of a row of MESSAGE_COLUMNS; one whose data cannot be decoded gets ``data`` {}.

    (Such a message is dead-lettered when a consumer reads it, with the reason as its ``error``.)
    """
    id_, stream, created, text, state, attempts, error = row
    if data is None:
        data, why = decode(text)
        if why is not None:
            data, error = {}, error or why
    return Message(id=id_, stream=stream, created=to_datetime(created), data=data,
                   state=state, attempts=attempts, error=error)


def decode_column(rows: Sequence[Sequence[Any]], column: int) -> list[tuple[Any, str | None]]:
    """``decode`` of every row's JSON in ``column``: one decoder call for all when none is tagged or bad."""
    texts = [row[column] for row in rows]
    if len(texts) > 1 and not any(_tagged(text) for text in texts):
        try:
            return [(doc, None) for doc in _plain_decoder.decode('[' + ','.join(texts) + ']')]
        except (RecursionError, ValueError, MemoryError):
            pass  # one of them cannot be decoded: find which, one by one
    return [decode(text) for text in texts]


def _decoded(rows: Sequence[Sequence[Any]], column: int) -> tuple[Sequence[Sequence[Any]], list[tuple[Any, str | None]],
                                                                list[tuple[RecordId, str]]]:
    """``decode_column``, then the rows that decoded with their data, and ``(id, why)`` of the others."""
    decoded = decode_column(rows, column)
    bad = [(row[0], why) for row, (_, why) in zip(rows, decoded) if why is not None]
    if bad:
        rows = [row for row, (_, why) in zip(rows, decoded) if why is None]
        decoded = [item for item in decoded if item[1] is None]
    return rows, decoded, bad


def messages_of(rows: Sequence[Sequence[Any]]) -> tuple[list[Message], list[tuple[RecordId, str]]]:
    """Messages of rows of MESSAGE_COLUMNS, their JSON decoded in one call.

    Returns the messages and ``(id, why)`` of the rows that cannot be decoded
    (left out: the caller dead-letters them).
    """
    rows, decoded, bad = _decoded(rows, 3)
    # positional arguments, no call per message but the constructor's (as available_messages_of)
    return [Message(id_, stream, to_datetime(created), doc, state, attempts, error)
            for (id_, stream, created, _, state, attempts, error), (doc, _) in zip(rows, decoded)], bad


def available_messages_of(name: str, rows: Sequence[Sequence[Any]]) -> tuple[list[Message], list[tuple[RecordId, str]]]:
    """Available messages of stream ``name`` from rows of AVAILABLE_COLUMNS; the JSON decoded in one call.

    The hot path of every consumer: no call per message but the constructor,
    and the columns every row shares (stream, state) not read at all.
    Returns the messages and ``(id, why)`` of those that cannot be decoded
    (left out: the caller dead-letters them).
    """
    rows, decoded, bad = _decoded(rows, 2)
    # positional arguments: half the cost of keywords, on the hot path (Message's field order)
    return [Message(id_, name, to_datetime(created), doc, AVAILABLE, attempts, error)
            for (id_, created, _, attempts, error), (doc, _) in zip(rows, decoded)], bad


def stream_of(row: Sequence[Any]) -> StreamInfo:
    name, created, last_read, interval, closed, max_age, status = row
    return StreamInfo(name=name, created=to_datetime(created), last_read=to_datetime(last_read), interval=interval,
                      closed=bool(closed), max_age=max_age, status=loads(status or '{}'))


def stream_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(STREAM_FIELDS)
    if unknown:
        raise ConfigurationError(f'unknown stream field(s) {", ".join(sorted(unknown))}; '
                                 f'known: {", ".join(STREAM_FIELDS)}')
    values = dict(fields)
    for key in ('created', 'last_read'):
        if key in values:
            values[key] = to_epoch(values[key])
    if 'closed' in values:
        values['closed'] = int(bool(values['closed']))
    if 'status' in values:
        values['status'] = json.dumps(values['status'] or {}, default=str)
    return values

