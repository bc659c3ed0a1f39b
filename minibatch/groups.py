"""A consumer's group: which messages it reads, when it copies new ones in, and when it keeps them.

Every group sees every message of a stream (docs/groups.rst). The store keeps
groups (:mod:`minibatch.store.base_groups`); this module is the consumer's side:

* the consumers without ``group=`` form the default group and read the stream
  itself, as always;
* a named group's consumers read its group stream (``orders[billing]``), into
  which they :meth:`~Membership.refill` copies of new messages, a batch at a time;
* committed messages are kept (state ``done``) while another group may still
  need them, and :meth:`~Membership.upkeep` removes what every group committed.
"""
from __future__ import annotations

import logging
import time

from minibatch.errors import ConfigurationError, NotSupportedByStore
from minibatch.store.base import Store
from minibatch.store.base_groups import DEFAULT_GROUP, STARTS, check_group, group_stream

logger = logging.getLogger('minibatch.groups')

#: messages a consumer copies into its group stream at once (one write)
PULL_BATCH = 1000
#: a consumer pulls again once fewer than this many of its copies are unclaimed, or when a round found
#: nothing to do (others of its group took them): the copies waiting stay about PULL_BATCH per consumer
LOW_WATER = PULL_BATCH // 2
#: seconds between two looks at the stream's groups (whether there are named groups, so retention to do)
REFRESH = 2.0
#: seconds between two rounds of retention on a stream: one consumer of any group does it for all
RETAIN_EVERY = 2.0


def check_options(group: str | None, start: str) -> str | None:
    """``group`` normalised (None for the default group); ConfigurationError for a bad group or start."""
    if start not in STARTS:
        raise ConfigurationError(f'start must be one of {", ".join(repr(s) for s in STARTS)}, got {start!r}')
    if group is None or group == DEFAULT_GROUP:
        return None
    return check_group(group)


class Membership:
    """One consumer's membership of a group of ``source`` (``group`` None: the default group).

    :param store: the store of the stream
    :param source: the stream producers append to
    :param group: the group's name, or None for the default group
    :param start: where a new group starts, ``'earliest'`` or ``'latest'``
    :param keep: the consumer keeps committed messages (``keep=True``)
    :param in_place: the consumer reads its group stream through the store's ``find_available`` and
        ``claim``, which on a store with ``reads_groups_in_place`` (SQLite) also give the stream's
        messages the group has not taken yet: nothing is copied in ahead (see ``refill``)
    """

    def __init__(self, store: Store, source: str, group: str | None, start: str = 'earliest',
                 keep: bool = False, in_place: bool = False) -> None:
        self.store = store
        self.in_place = in_place and bool(getattr(store, 'reads_groups_in_place', False))
        self.source = source
        self.group = check_options(group, start)
        self.start = start
        self.keep = keep
        self.joined = False
        self._others = False  # the stream has named groups (or the default group is not alone)
        self._next_refresh = 0.0
        self._unclaimed = 0  # copies this consumer pulled and has not claimed yet (others may have)
        self._starved = True  # the last round found no window: pull whatever the count says

    @property
    def named(self) -> bool:
        """True for a named group (it reads copies), False for the default group."""
        return self.group is not None

    @property
    def stream_name(self) -> str:
        """The stream this consumer claims from: its group stream, or the stream itself."""
        return group_stream(self.source, self.group) if self.group is not None else self.source

    @property
    def keeps_messages(self) -> bool:
        """Whether commits keep messages (state ``done``) instead of removing them.

        A named group keeps its copies (they mark what it has seen) until
        retention removes them with their originals; the default group keeps
        messages while a named group is registered, which may still need them
        (the store decides that in the commit too, so a group registered since
        the last look is never missed).
        """
        return self.keep or self.named or self._others

    def join(self) -> None:
        """Register the group on the stream (once; a no-op for a group that exists). One write."""
        if self.joined:
            return
        try:
            created = self.store.register_group(self.source, self.group or DEFAULT_GROUP, self.start, self.keep)
        except NotSupportedByStore:
            if self.named:
                raise
            self.joined = True  # a store without groups: its consumers are the stream's only group
            return
        if created:
            logger.info('minibatch: group %r of stream %r created, starting at the %s message',
                        self.group or DEFAULT_GROUP, self.source, 'first retained' if self.start == 'earliest'
                        else 'next')
        self.joined = True
        self._refresh(time.monotonic())

    def refill(self) -> int:
        """Copy new messages into a named group's stream, a batch at a time; returns how many.

        0 for the default group, and for a consumer that reads the stream in place (``in_place``).
        """
        if self.group is None or self.in_place or (self._unclaimed >= LOW_WATER and not self._starved):
            return 0
        copied = self.store.pull(self.source, self.group, PULL_BATCH)
        self._unclaimed = copied if self._starved else self._unclaimed + copied
        self._starved = False
        return copied

    def claimed(self, count: int) -> None:
        """This consumer claimed ``count`` messages (of its pulls or others')."""
        self._unclaimed = max(0, self._unclaimed - count)

    def starved(self) -> None:
        """A round of this consumer found no window: the next refill pulls, whatever it pulled before."""
        self._starved = True

    def upkeep(self) -> int:
        """Look at the stream's groups now and then; remove what every group committed. Returns the count."""
        now = time.monotonic()
        if now < self._next_refresh:
            return 0
        self._refresh(now)
        if not self._others or not self.store.take_turn(self.source, 'retain', RETAIN_EVERY):
            return 0
        removed = self.store.retain(self.source)
        if removed:
            logger.debug('minibatch: %d messages of %r committed by every group removed', removed, self.source)
        return removed

    def _refresh(self, now: float) -> None:
        registry = self.store.groups(self.source)
        self._others = any(name != DEFAULT_GROUP for name in registry)
        self._next_refresh = now + REFRESH
