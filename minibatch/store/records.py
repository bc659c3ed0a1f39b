"""The records of the store contract: message states, ids, and the values stores return.

Plain values with no behaviour: the :class:`~minibatch.store.base.Store`
methods take and return them (see that module for the contract itself).
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: message states; ``processed`` is ``state != AVAILABLE``
AVAILABLE = 'available'
CLAIMED = 'claimed'
RETRY = 'retry'
DONE = 'done'
DEAD = 'dead'
STATES = (AVAILABLE, CLAIMED, RETRY, DONE, DEAD)

#: A message or window id, opaque to the core: an ``int`` on SQLite, a
#: ``bson.ObjectId`` on MongoDB. Ids compare in append order within one store.
RecordId: TypeAlias = Any
#: A message as appended: a dict of plain values (see docs/streams.rst).
Doc: TypeAlias = dict[str, Any]
#: How deeply a message may nest containers (dicts, lists), the message itself being level 1.
#: Both stores refuse a deeper message at append with InvalidMessage: decoding absurdly deep data
#: fails (RecursionError, InvalidBSON), and MongoDB allows 100 levels for a whole record.
MAX_NESTING = 64
#: A key of a stream's ``status`` dict, or a path of keys into nested dicts.
StatusPath: TypeAlias = str | Sequence[str]
#: (where, why) a message cannot be stored, as :func:`shape_problem` reports it
Problem: TypeAlias = tuple[str, str]


def shape_problem(value: Any, path: str = 'message',
                  item_problem: Callable[[Any, Any, Any, str], Problem | None] | None = None,
                  parents: tuple[int, ...] = ()) -> Problem | None:
    """(where, why) for the first part of the dict/list/tuple ``value`` no store may accept, else None.

    Both stores refuse a circular reference and nesting deeper than
    MAX_NESTING; a store adds its own rules with ``item_problem(container,
    key, item, path)``, called for every item of every container (``path``
    names the container). Read-only; stops at the first problem.
    """
    if id(value) in parents:
        return path, 'a circular reference'
    if len(parents) >= MAX_NESTING:
        return path, f'nested more than {MAX_NESTING} levels deep (the limit of both stores)'
    parents = (*parents, id(value))
    items: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        found = item_problem(value, key, item, path) if item_problem is not None else None
        if found is None and isinstance(item, (dict, list, tuple)):
            found = shape_problem(item, f'{path}[{key!r}]', item_problem, parents)
        if found:
            return found
    return None


def utcnow() -> datetime.datetime:
    """The current time as a naive UTC datetime (the convention of the original minibatch)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class Message:
    """One message of a stream as a store returns it.

    ``data`` is the dict that was appended. ``attempts`` counts failed or
    abandoned deliveries; ``error`` is the last failure (set on retry and dead).
    ``token`` is the claim a message returned by :meth:`Store.claim` is held
    under (None otherwise); it takes no part in comparisons.
    """
    id: RecordId
    stream: str
    created: datetime.datetime
    data: Doc
    state: str = AVAILABLE
    attempts: int = 0
    error: str | None = None
    token: str | None = field(default=None, compare=False, repr=False)

    @property
    def processed(self) -> bool:
        """False exactly while the message is available (the original minibatch's flag)."""
        return self.state != AVAILABLE


@dataclass
class StreamInfo:
    """The metadata record of a stream."""
    name: str
    created: datetime.datetime
    last_read: datetime.datetime | None
    interval: float = 1.0
    closed: bool = False
    max_age: float | None = None
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class WindowRecord:
    """One emitted window as a store keeps it."""
    id: RecordId
    stream: str
    created: datetime.datetime
    data: list[Any]
    processed: bool = False
    query: list[Any] = field(default_factory=list)
