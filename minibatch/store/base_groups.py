"""The storage contract for consumer groups: every group sees every message of a stream.

:class:`~minibatch.store.base.Store` inherits it. Docs: docs/groups.rst.

How a store keeps groups (the same on every store, so that the whole message
life cycle of :mod:`minibatch.store.base` serves groups unchanged):

* **The default group** is the stream itself: the consumers without ``group=``
  claim and commit the stream's own messages, exactly as before groups existed.
* **A named group** ``g`` of stream ``s`` has a *group stream*, named
  :func:`group_stream` ``(s, g)`` (``'s[g]'``), holding copies of the messages of
  ``s``. Its consumers :meth:`~StoreGroups.pull` new messages of ``s`` into it
  (one write for a batch of messages, whatever their number) and then claim,
  commit, retry and dead-letter the copies with the ordinary methods. A copy
  records the id of its original (``origin``); a message is copied into a
  group at most once (until :meth:`~StoreGroups.replay` asks for it again), and
  a committed copy stays, state ``done``, until the original is removed.
* **The registry** is the entry ``groups`` of the stream's ``status``:
  ``{group: {'created': ..., 'start': 'earliest'|'latest', 'keep': bool,
  'position': <id of the last message of s copied, or None>}}``; the default
  group has an entry once one of its consumers has run.
* **Retention** (:meth:`~StoreGroups.retain`): a message of ``s`` is removed
  once every registered group has committed it (the default group: state
  ``done``; a named group: copied, and its copy ``done`` or ``dead``), unless a
  registered group keeps messages (``keep=True``). ``max_age`` removes
  messages whatever the groups. While a named group is registered, the
  default group's commits keep messages (state ``done``) for retention to remove.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from minibatch.errors import ConfigurationError, NotSupportedByStore
from minibatch.store.records import RecordId, StreamInfo

#: the name of the group of the consumers without ``group=``
DEFAULT_GROUP = 'default'
#: where a new group starts: every retained message, or only those appended from now on (Kafka's auto.offset.reset)
STARTS = ('earliest', 'latest')


def group_stream(name: str, group: str) -> str:
    """The name of the stream holding group ``group``'s copies of stream ``name``'s messages."""
    return f'{name}[{group}]'


def check_group(group: Any) -> str:
    """``group`` if it can name a group; ConfigurationError saying why not otherwise."""
    if not isinstance(group, str) or not group.strip():
        raise ConfigurationError(f'group must be a non-empty string, got {group!r}')
    bad = [c for c in '[].$"' if c in group]
    if bad or group != group.strip():
        raise ConfigurationError(f'group {group!r} may not contain {"".join(bad) or "leading or trailing spaces"}: '
                                 'a group name is a key of the stream record (letters, digits, - and _ are safe)')
    return group


class StoreGroups:
    """Consumer groups, replay and retention: part of every store's contract.

    A store without groups keeps these defaults, which raise
    :class:`~minibatch.errors.NotSupportedByStore`.
    """
    #: True if ``find_available`` and ``claim`` of a group stream ``s[g]`` also give the messages of ``s``
    #: the group has not taken yet, so that its consumers need not ``pull`` copies ahead (a copy is then
    #: made only of what a claim passes or gives up). False: consumers pull.
    reads_groups_in_place: bool = False

    if TYPE_CHECKING:  # declared and documented by Store
        def describe(self) -> str: ...
        def get_stream(self, name: str) -> StreamInfo | None: ...

    def _no_groups(self) -> NotSupportedByStore:
        return NotSupportedByStore(f'{self.describe()} has no consumer groups')

    def register_group(self, name: str, group: str, start: str = 'earliest', keep: bool = False) -> bool:
        """Register ``group`` on stream ``name`` (creating the stream record if needed) unless it exists.

        Atomic: of concurrent calls, one creates the entry; the others (and
        later calls) leave it as it is, except that ``keep`` True is recorded
        (a group keeps messages once any of its consumers asked). A named
        group starting ``'earliest'`` will copy every message of ``name`` still
        retained; ``'latest'`` only those appended after this call. The
        default group (:data:`DEFAULT_GROUP`) has no copies: its entry only
        makes retention wait for it. Returns True if this call created it.
        """
        raise self._no_groups()

    def groups(self, name: str) -> dict[str, dict[str, Any]]:
        """The registry of stream ``name``: group -> entry (see the module docs); {} when none. Read-only.

        Derived: the ``groups`` entry of the stream's ``status``.
        """
        info = self.get_stream(name)
        registry = info.status.get('groups') if info is not None else None
        return dict(registry) if isinstance(registry, dict) else {}

    def pull(self, name: str, group: str, limit: int) -> int:
        """Copy up to ``limit`` messages of ``name`` the named ``group`` has not seen into its group stream.

        Oldest first; messages appended dead (``append_dead``) are skipped. The
        copies are available messages of :func:`group_stream` with the
        original's ``created`` and data. A message is copied once even when
        several consumers of the group pull at the same moment, and none is
        skipped, also when producers append concurrently (on MongoDB, whose
        ids order across producers only to the second, a pull looks back over
        the last seconds as well: see the store). One write (plus its read);
        returns how many were copied (0 when nothing is new or the group is
        not registered).
        """
        raise self._no_groups()

    def delete_group(self, name: str, group: str) -> bool:
        """Remove ``group`` from stream ``name``: its registry entry and (named) its group stream.

        Removes data (the group's copies, dead letters and windows); what only
        it held is then removed by the next :meth:`retain`. Returns False if
        there was no such group.
        """
        raise self._no_groups()

    def replay(self, name: str, group: str, since: datetime.datetime | RecordId | None = None) -> int:
        """Make ``group`` see the retained messages of ``name`` again, from ``since`` on.

        ``since``: a naive UTC datetime (messages created at or after it), a
        message id of ``name`` (that message and later ones), or None (every
        retained message). A named group's copies from there are removed,
        whatever their state (a window in flight then commits nothing), and
        its position is moved back,
        so the next pull copies them again. The default group's messages from
        there in state ``done`` become available. Other groups are untouched.
        Only retained messages can be replayed. Returns how many messages the
        group will see again (the retained ones from ``since`` on).
        """
        raise self._no_groups()

    def retain(self, name: str) -> int:
        """Remove the messages of ``name`` that every registered group has committed (see the module docs).

        Also removes the committed copies of named groups whose original is
        gone. Nothing when no group is registered or one keeps messages.
        Removes data; safe to run from every consumer at once. Returns the
        number of messages of ``name`` removed.
        """
        raise self._no_groups()

    def take_turn(self, name: str, job: str, seconds: float) -> bool:
        """Whether this caller does ``job`` on stream ``name`` now: True for one caller per ``seconds``.

        Atomic (a compare-and-set of the time ``job`` was last taken, kept in
        the stream's ``status``): of consumers racing, one gets True; the others
        get False until ``seconds`` have passed. For work one consumer does for
        all, such as :meth:`retain`. False for a missing stream.
        """
        raise self._no_groups()

    def group_lag(self, name: str, group: str) -> tuple[int, datetime.datetime | None]:
        """``(lag, oldest)``: messages of ``name`` ``group`` has not committed, and the ``created`` of the oldest.

        Named group: messages not yet copied plus copies available, claimed or
        retrying; the default group: the stream's own messages in those states.
        Dead letters are not lag. ``(0, None)`` when the group is caught up. Read-only.
        """
        raise self._no_groups()
