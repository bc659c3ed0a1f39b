"""The storage contract: what every minibatch store promises.

The core (streams, window emitters, consumers) talks only to this interface,
never to a driver. A store keeps three kinds of records:

* **streams**: one record per stream name with its metadata
  (``created``, ``closed``, ``interval``, ``last_read``, ``status``, ``max_age``);
* **messages** (the *buffer*): one record per appended dict;
* **windows**: one record per emitted window (the data handed to the function).

Message life cycle (see docs/reliability.rst)::

    available --claim--> claimed --commit--> (deleted) or done (keep=True)
                            |  \\--release--> retry --(backoff over)--> available
                            |                   \\--(too many attempts)--> dead
                            \\--lease expires--> available (or dead), attempt counted
    dead --requeue--> available

``processed`` keeps the meaning of the original minibatch: ``False`` means the
message is *available* (waiting to be taken); every other state has ``True``.

Times are naive UTC :class:`datetime.datetime` values throughout the contract.
A *token* identifies one claim (one window); all messages claimed together share it.

Methods documented as **atomic** are atomic per message at least: two
consumers can never both claim, commit or release the same message, and no
store implements an atomic method by check-then-set.

A store subclasses :class:`Store` and implements its abstract methods; the
derived methods (written once, here, on top of the abstract ones) and the
defaults need no override. What a store can do beyond the contract it says in
capability attributes (``querysets``, ``transient_errors``, and its waiter's
``supported`` / ``sees_all_changes``), never through its class.
"""
from __future__ import annotations

import abc
import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

from minibatch.errors import ConfigurationError, InvalidMessage, NotSupportedByStore

# the records and the waiter are re-exported here: the contract is reached as minibatch.store.base.X
__all__ = ['AVAILABLE', 'CLAIMED', 'DEAD', 'DONE', 'RETRY', 'STATES', 'Doc', 'Message', 'RecordId', 'StatusPath',
           'StreamInfo', 'WindowRecord', 'utcnow', 'Waiter', 'Store', 'Output', 'DEFAULT_GROUP', 'group_stream']

from minibatch.store.records import (AVAILABLE, CLAIMED, DEAD, DONE, RETRY, STATES, Doc,  # noqa: F401,E402
                                     Message, RecordId, StatusPath, StreamInfo, WindowRecord, utcnow)
from minibatch.store.waiting import Waiter  # noqa: E402 (re-exported: part of the contract)
from minibatch.store.base_upkeep import StoreUpkeep  # noqa: E402
from minibatch.store.base_groups import DEFAULT_GROUP, StoreGroups, group_stream  # noqa: E402,F401

#: what a window's commit appends exactly once (``commit(output=...)``): (stream name, list of dicts)
Output: TypeAlias = tuple[str, Sequence[Doc]]


class Store(StoreUpkeep, StoreGroups):
    """Base class of stores: the contract every store meets.

    Subclasses implement the abstract methods; the others are derived from
    them once, here, or are defaults a store may override. Capabilities are
    class attributes, so that callers never test ``isinstance``.
    """
    querysets: ClassVar[bool] = False
    """``queryset()`` works, so ``Stream.buffer()`` / ``Stream.window()`` return
    mongoengine querysets (MongoDB only); otherwise they return lists."""
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError,)
    """Exceptions that mean "the store is briefly unreachable or busy":
    consumers wait these out and retry instead of dying."""
    opens_read_only: ClassVar[bool] = False
    """The store can be opened read-only (``readonly=True`` in the URL or as an
    option): read-only commands (``minibatch status``, ``tail``) then never write."""

    def __init__(self, url: str, **options: Any) -> None:
        """Configure the store for ``url`` and its ``options``; opens no connection yet.

        The first operation connects, and raises :class:`~minibatch.errors.StoreUnavailable`
        within a bounded time when the store cannot be reached. A URL the store
        cannot use raises :class:`~minibatch.errors.ConfigurationError` here.
        """
        self.url = url

    # -- life cycle -------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's connections. The store may be used again afterwards (it reconnects)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line, credential-free description of where the data lives (for logs, status)."""

    # -- streams ----------------------------------------------------------
    @abc.abstractmethod
    def ensure_stream(self, name: str, **defaults: Any) -> StreamInfo:
        """Get the stream ``name``, creating it with ``defaults`` if it does not exist.

        Atomic: concurrent calls create exactly one record. ``defaults`` are
        StreamInfo fields; they apply only when the stream is created, except
        ``interval`` and ``max_age`` which, when given (not None), update an
        existing stream. Returns the :class:`StreamInfo`.
        """

    @abc.abstractmethod
    def get_stream(self, name: str) -> StreamInfo | None:
        """Return the :class:`StreamInfo` of ``name``, or None if there is no such stream. Read-only."""

    @abc.abstractmethod
    def list_streams(self) -> list[StreamInfo]:
        """Return the :class:`StreamInfo` of every stream, by name; [] when there are none. Read-only."""

    @abc.abstractmethod
    def update_stream(self, name: str, **fields: Any) -> None:
        """Set StreamInfo ``fields`` of stream ``name``; a missing stream is left alone.

        One write, not a compare-and-set (last writer wins); returns None.
        """

    @abc.abstractmethod
    def set_status(self, name: str, path: StatusPath, value: Any) -> None:
        """Set one entry of stream ``name``'s ``status`` dict, leaving every other entry untouched.

        ``path`` is a key, or a tuple of keys into nested dicts (missing ones are
        created), e.g. ``('checkpoints', 'orders')``; ``value`` None removes the
        entry. Atomic: two processes setting different entries never undo each
        other. Keys must be non-empty strings without ``.``, ``"`` or a leading
        ``$`` (ConfigurationError otherwise; see :meth:`_check_status_path`); a
        value the store cannot keep raises InvalidMessage. A missing stream is
        left alone. Returns None.
        """

    @staticmethod
    def _check_status_path(path: StatusPath) -> tuple[str, ...]:
        """The keys of a ``set_status`` path as a tuple; ConfigurationError for a bad or empty one."""
        keys: tuple[object, ...] = (path,) if isinstance(path, str) else tuple(path)
        checked: list[str] = []
        for key in keys:
            if not isinstance(key, str) or not key or '.' in key or '"' in key or key.startswith('$'):
                raise ConfigurationError(f'status keys must be non-empty strings without ".", \'"\' or a '
                                         f'leading "$", got {key!r}')
            checked.append(key)
        if not checked:
            raise ConfigurationError('set_status needs at least one key')
        return tuple(checked)

    @abc.abstractmethod
    def compare_and_set_last_read(self, name: str, expected: datetime.datetime | None,
                                  new: datetime.datetime) -> bool:
        """Set ``last_read`` to ``new`` only if it is still ``expected``.

        Atomic: of several consumers racing with the same ``expected`` value,
        exactly one gets True. This hands each FixedTimeWindow slot to one
        consumer. False when the value changed meanwhile or there is no such stream.
        """

    @abc.abstractmethod
    def delete_stream(self, name: str) -> None:
        """Remove the stream record and all its messages, dead letters, windows and consumer records.

        Removes data, irreversibly. Returns None; deleting a missing stream is not an error.
        """

    @abc.abstractmethod
    def clear(self, name: str) -> int:
        """Remove all messages (any state) and windows of ``name``, keeping the stream record.

        Removes data, irreversibly. Returns the number of messages removed (0 when empty).
        """

    # -- messages: producing ----------------------------------------------
    @abc.abstractmethod
    def validate(self, docs: Iterable[Doc]) -> None:
        """Raise :class:`~minibatch.errors.InvalidMessage` unless every dict in ``docs`` can be stored.

        Read-only, no round trip: lets batching producers reject a bad message
        when it is appended rather than when its batch is written. Nothing to
        check (an empty ``docs``) passes.
        """

    @abc.abstractmethod
    def append(self, name: str, docs: Sequence[Doc]) -> list[RecordId]:
        """Append the dicts ``docs`` to stream ``name`` as available messages.

        All or nothing: every document is validated and serialised before
        anything is written, so a bad document (or a single dict instead of a
        list) raises :class:`~minibatch.errors.InvalidMessage` and writes none
        of the batch. The write is acknowledged by the store when this
        returns. Ids increase in append order for each producer; across
        producers they follow arrival (SQLite: strictly; MongoDB ObjectIds: to
        the second) and are never reused. Returns the list of new ids ([] for
        an empty ``docs``, which writes nothing).
        """

    @abc.abstractmethod
    def append_dead(self, name: str, docs: Sequence[Doc], error: str) -> list[RecordId]:
        """Append the dicts ``docs`` to ``name`` directly as dead letters with ``error``.

        For input that must not be processed but must not be lost either (a
        source's payload that is not JSON, say): it shows in
        ``dead_letters()`` and can be inspected, requeued or purged. All or
        nothing like ``append``. Returns the list of new ids ([] for an empty ``docs``).
        """

    @staticmethod
    def _batch(docs: Sequence[Doc], method: str) -> list[Doc]:
        """``docs`` as a list; InvalidMessage for a single dict, the commonest slip (``append({...})``)."""
        if isinstance(docs, dict):
            raise InvalidMessage(f'{method}() takes a list of dicts, not a single dict')
        return list(docs)

    # -- messages: consuming ----------------------------------------------
    @abc.abstractmethod
    def find_available(self, name: str, limit: int | None = None,
                       until: datetime.datetime | None = None) -> list[Message]:
        """Return available messages of ``name``, oldest (lowest id) first, at most ``limit``.

        Read-only: claims nothing, so the result may already be taken by
        another consumer when you act on it (``claim()`` settles that).
        ``until`` keeps only messages created before that time. Returns [] when none.
        """

    @abc.abstractmethod
    def claim(self, name: str, ids: Sequence[RecordId | Message], token: str, lease: float) -> list[Message]:
        """Claim the messages ``ids`` of ``name`` that are still available.

        ``ids`` holds message ids or :class:`Message` objects as returned by
        ``find_available`` (which lets a store skip reading their data again;
        those objects may be returned, updated).

        Atomic per message: a message is claimed by exactly one caller even
        when several race for it. Claimed messages get state ``claimed``,
        ``processed`` True, the claim ``token`` and a lease that ends ``lease``
        seconds from now. Returns the claimed messages in id order, each with
        ``token`` set; [] if none were still available (or ``ids`` is empty).
        """

    @abc.abstractmethod
    def renew(self, name: str, token: str, lease: float) -> int:
        """Extend the lease of the messages claimed with ``token`` to ``lease`` seconds from now.

        Atomic per message. Returns how many messages are still held under
        ``token``; 0 means the lease was lost (it expired and the messages
        went back to the stream).
        """

    @abc.abstractmethod
    def commit(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
               window_id: RecordId | None = None, output: Output | None = None) -> int:
        """Mark the window claimed with ``token`` as successfully processed.

        Only messages among ``ids`` still held under ``token`` are affected,
        so a consumer whose lease was lost cannot commit another's claim.
        Removes the messages unless ``keep`` is true, in which case they stay
        with state ``done``; while a named consumer group is registered on
        ``name`` they stay ``done`` whatever ``keep`` (that group may not have
        copied them yet: :meth:`retain` removes them once every group has
        committed them; decided in the commit, so a group registered a moment
        before is never missed). Atomic per message. With ``window_id``, that
        window record is marked processed too (in the same transaction where
        the store has transactions, right after otherwise), also when ``ids``
        is empty; a missing window record is ignored. Returns the number of
        messages committed (0 for empty ``ids``).

        ``output`` ``(stream, docs)``: append ``docs`` to ``stream`` (of this
        store) as part of the commit, exactly once: the commit and the append
        take effect together or not at all, also when the process is killed
        in between (SQLite: one transaction; MongoDB: the docs are written
        invisible and published once the commit is recorded, see its store).
        ``docs`` are validated before anything is written (InvalidMessage).
        When none of ``ids`` is held any more, nothing is appended.
        """

    def commit_window(self, name: str, token: str | None, ids: Sequence[RecordId], keep: bool = False,
                      data: list[Any] | None = None, output: Output | None = None) -> tuple[int, RecordId]:
        """Commit a window that has no record yet, as :meth:`commit` does, and record it as processed.

        For windows emitted without a record (``keep=False``: see
        ``WindowEmitter.emit``). ``data`` None records the window without its
        data (``data`` []), which is not copied a second time. The record is
        written whatever the count committed, as ``commit(window_id=...)``
        marks it. Returns ``(committed, window_id)``: the number of messages
        committed and the new record's id. ``output`` as for :meth:`commit`.

        Optional: the default is ``save_window`` then ``commit(window_id=...)``
        (the round trips of a window recorded when emitted); a store with
        transactions overrides it to write the record in the commit's
        transaction (SQLite), so that a window costs two writes: claim, commit.
        """
        window_id = self.save_window(name, [] if data is None else data, token=token)
        return self.commit(name, token, ids, keep=keep, window_id=window_id, output=output), window_id

    def commit_soon(self, name: str, token: str | None, ids: Sequence[RecordId],
                    then: Callable[[int, RecordId | None], None], keep: bool = False,
                    window_id: RecordId | None = None, record: bool = False, data: list[Any] | None = None,
                    output: Output | None = None) -> None:
        """Commit as :meth:`commit` does (``record``: as :meth:`commit_window` does), now or a little later.

        Then calls ``then(committed, window_id)`` (the new record's id with
        ``record``). A store may carry the commit in this process's next write
        instead (SQLite: a window's commit and the next claim are one
        transaction), at the latest in :meth:`flush`; until then it is not
        durable: a crash loses it and the messages are delivered again when
        their lease ends, as if the consumer had died before committing.
        Invalid ``output`` raises here, writing nothing.

        Optional: the default commits now.
        """
        if record:
            count, window_id = self.commit_window(name, token, ids, keep=keep, data=data, output=output)
        else:
            count = self.commit(name, token, ids, keep=keep, window_id=window_id, output=output)
        then(count, window_id)

    def flush(self) -> None:
        """Carry out now the commits :meth:`commit_soon` left for later (none by default). Idempotent."""

    @abc.abstractmethod
    def release(self, name: str, token: str, ids: Sequence[RecordId], error: object = None,
                max_attempts: int = 3, backoff: float = 0.0) -> tuple[int, int]:
        """Give back a failed window: count an attempt, retry later or dead-letter.

        For each message among ``ids`` held under ``token``: ``attempts`` goes
        up by one and ``error`` is recorded; if ``attempts`` reaches
        ``max_attempts`` the message becomes ``dead`` (kept for inspection and
        ``requeue()``), otherwise it waits in state ``retry`` for ``backoff``
        seconds and then becomes available again (see ``expire_leases``).
        A ``backoff`` of 0 makes it available at once. Atomic per message.
        Returns ``(retried, dead)`` counts; ``(0, 0)`` for empty ``ids``.
        """

    @abc.abstractmethod
    def unclaim(self, name: str, token: str, ids: Sequence[RecordId]) -> int:
        """Give back messages without counting an attempt (graceful stop, partial claim).

        Only messages among ``ids`` still held under ``token`` are affected;
        they become available at once. Atomic per message. Returns how many
        were given back (0 for empty ``ids``).
        """

    @abc.abstractmethod
    def expire_leases(self, name: str, max_attempts: int = 3) -> int:
        """Make messages whose lease or retry backoff is over available again.

        A ``claimed`` message whose lease ended (its consumer died or hung)
        counts one attempt and becomes ``dead`` if that reaches
        ``max_attempts``; a ``retry`` message whose backoff ended becomes
        available without a new attempt. Atomic per message (safe to run from
        every consumer at once). Returns the number of messages changed (0 when none).
        """

    # -- dead letters -----------------------------------------------------
    def dead_letters(self, name: str, limit: int | None = None) -> list[Message]:
        """Return the dead messages of ``name`` (with ``attempts`` and ``error``), oldest first.

        Read-only; [] when there are none. Derived: ``messages(name, state=DEAD)``.
        """
        return self.messages(name, state=DEAD, limit=limit)

    @abc.abstractmethod
    def requeue(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        """Make dead messages available again with ``attempts`` reset to 0 and ``error`` cleared.

        ``ids`` None means every dead message of the stream; listed ids that
        are not dead letters of ``name`` are left alone. Atomic per message.
        Returns the number requeued (0 when there are none).
        """

    @abc.abstractmethod
    def purge_dead(self, name: str, ids: Iterable[RecordId] | None = None) -> int:
        """Delete dead messages (all of the stream's if ``ids`` is None; other messages never).

        Removes data, irreversibly. Returns the number deleted (0 when there are none).
        """

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name: str) -> Waiter:
        """Return a :class:`Waiter` for new messages of ``name``; the caller closes it.

        The default just sleeps for the timeout (no push wake-ups); a store that
        can do better returns its own, whose ``supported`` and
        ``sees_all_changes`` say what it sees.
        """
        return Waiter(self, name)
