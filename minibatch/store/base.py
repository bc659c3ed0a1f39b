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
"""
import datetime
import time
from dataclasses import dataclass, field

from minibatch.errors import ConfigurationError

#: message states; ``processed`` is ``state != AVAILABLE``
AVAILABLE = 'available'
CLAIMED = 'claimed'
RETRY = 'retry'
DONE = 'done'
DEAD = 'dead'
STATES = (AVAILABLE, CLAIMED, RETRY, DONE, DEAD)


def utcnow():
    """The current time as a naive UTC datetime (the convention of the original minibatch)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class Message:
    """One message of a stream as a store returns it.

    ``data`` is the dict that was appended. ``attempts`` counts failed or
    abandoned deliveries; ``error`` is the last failure (set on retry and dead).
    """
    id: object
    stream: str
    created: datetime.datetime
    data: dict
    state: str = AVAILABLE
    attempts: int = 0
    error: str = None

    @property
    def processed(self):
        return self.state != AVAILABLE


@dataclass
class StreamInfo:
    """The metadata record of a stream."""
    name: str
    created: datetime.datetime
    last_read: datetime.datetime
    interval: float = 1.0
    closed: bool = False
    max_age: float = None
    status: dict = field(default_factory=dict)


@dataclass
class WindowRecord:
    """One emitted window as a store keeps it."""
    id: object
    stream: str
    created: datetime.datetime
    data: list
    processed: bool = False
    query: list = field(default_factory=list)


class Waiter:
    """Blocks until a stream may have new messages.

    The default implementation only sleeps: it is what a store without push
    wake-ups gives. ``wait()`` returning True means "something changed, look
    now"; False means the timeout passed. A spurious True is allowed, a missed
    change is not (callers poll on timeout anyway).

    ``supported``: the waiter does push wake-ups (consumers may then wait
    longer between polls). ``sees_all_changes``: it wakes on every change
    that can make messages available (inserts, and updates such as retries
    and requeues), not only on appends, so no follow-up polls are needed.
    """
    supported = False
    sees_all_changes = False

    def __init__(self, store, stream):
        self.store = store
        self.stream = stream

    def wait(self, timeout):
        time.sleep(timeout)
        return False

    def close(self):
        pass


class Store:
    """Base class of stores. Subclasses implement every method below.

    Capability flags (class attributes) tell the core what a store can do,
    so that callers never test ``isinstance``:

    * ``push_wakeups``: ``waiter()`` returns as soon as a message is appended,
      so an idle consumer need not poll often.
    * ``querysets``: ``Stream.buffer()`` / ``Stream.window()`` can return
      mongoengine querysets (MongoDB only); otherwise they return lists.
    * ``transient_errors``: exceptions that mean "the store is briefly
      unreachable or busy"; consumers wait these out and retry instead of dying.
    """
    #: URL schemes this store serves, e.g. ('mongodb', 'mongodb+srv')
    schemes = ()
    push_wakeups = False
    querysets = False
    transient_errors = (ConnectionError,)

    def __init__(self, url, **options):
        self.url = url
        self.options = options

    # -- life cycle -------------------------------------------------------
    def close(self):
        """Release connections. The store may be used again afterwards (it reconnects)."""

    def describe(self):
        """A one-line, credential-free description of where the data lives (for logs, status)."""
        return self.url

    # -- streams ----------------------------------------------------------
    def ensure_stream(self, name, **defaults):
        """Get the stream ``name``, creating it with ``defaults`` if it does not exist.

        Atomic: concurrent calls create exactly one record. ``defaults`` are
        StreamInfo fields; they apply only when the stream is created, except
        ``interval`` and ``max_age`` which, when given (not None), update an
        existing stream. Returns the :class:`StreamInfo`.
        """
        raise NotImplementedError

    def get_stream(self, name):
        """Return the :class:`StreamInfo` of ``name``, or None if there is no such stream."""
        raise NotImplementedError

    def list_streams(self):
        """Return the :class:`StreamInfo` of every stream, by name; [] when there are none."""
        raise NotImplementedError

    def update_stream(self, name, **fields):
        """Set StreamInfo ``fields`` of stream ``name``. Not a compare-and-set; returns None."""
        raise NotImplementedError

    def set_status(self, name, path, value):
        """Set one entry of stream ``name``'s ``status`` dict, leaving every other entry untouched.

        ``path`` is a key, or a tuple of keys into nested dicts (missing ones are
        created), e.g. ``('checkpoints', 'orders')``; ``value`` None removes the
        entry. Atomic: two processes setting different entries never undo each
        other. Keys must be non-empty strings without ``.``, ``"`` or a leading
        ``$`` (ConfigurationError otherwise). A missing stream is left alone.
        Returns None.
        """
        raise NotImplementedError

    @staticmethod
    def _check_status_path(path):
        if isinstance(path, str):
            path = (path,)
        path = tuple(path)
        for key in path:
            if not isinstance(key, str) or not key or '.' in key or '"' in key or key.startswith('$'):
                raise ConfigurationError(f'status keys must be non-empty strings without ".", \'"\' or a '
                                         f'leading "$", got {key!r}')
        if not path:
            raise ConfigurationError('set_status needs at least one key')
        return path

    def compare_and_set_last_read(self, name, expected, new):
        """Set ``last_read`` to ``new`` only if it is still ``expected``.

        Atomic: of several consumers racing with the same ``expected`` value,
        exactly one gets True. This hands each FixedTimeWindow slot to one consumer.
        """
        raise NotImplementedError

    def delete_stream(self, name):
        """Remove the stream record and all its messages, dead letters and windows.

        Removes data, irreversibly. Returns None; deleting a missing stream is not an error.
        """
        raise NotImplementedError

    def clear(self, name):
        """Remove all messages (any state) and windows of ``name``, keeping the stream record.

        Removes data, irreversibly. Returns the number of messages removed (0 when empty).
        """
        raise NotImplementedError

    # -- producing --------------------------------------------------------
    def append(self, name, docs):
        """Append the dicts ``docs`` to stream ``name`` as available messages.

        All or nothing: every document is validated and serialised before
        anything is written, so a bad document raises
        :class:`~minibatch.errors.InvalidMessage` and writes none of the batch.
        The write is acknowledged by the store when this returns. Ids increase
        in append order for each producer; across producers they follow
        arrival (SQLite: strictly; MongoDB ObjectIds: to the second) and are
        never reused. Returns the list of new ids ([] for an empty ``docs``).
        """
        raise NotImplementedError

    def append_dead(self, name, docs, error):
        """Append the dicts ``docs`` to ``name`` directly as dead letters with ``error``.

        For input that must not be processed but must not be lost either (a
        source's payload that is not JSON, say): it shows in
        ``dead_letters()`` and can be inspected, requeued or purged. All or
        nothing like ``append``. Returns the list of new ids.
        """
        raise NotImplementedError

    def validate(self, docs):
        """Raise :class:`~minibatch.errors.InvalidMessage` unless every dict in ``docs`` can be stored.

        Read-only, no round trip: lets batching producers reject a bad message
        when it is appended rather than when its batch is written.
        """
        raise NotImplementedError

    # -- consuming --------------------------------------------------------
    def find_available(self, name, limit=None, until=None):
        """Return available messages of ``name``, oldest (lowest id) first.

        Read-only: claims nothing, so the result may already be taken by
        another consumer when you act on it (``claim()`` settles that).
        ``until`` keeps only messages created before that time. Returns [] when none.
        """
        raise NotImplementedError

    def claim(self, name, ids, token, lease):
        """Claim the messages ``ids`` of ``name`` that are still available.

        ``ids`` holds message ids or :class:`Message` objects as returned by
        ``find_available`` (which lets a store skip reading their data again).

        Atomic per message: a message is claimed by exactly one caller even
        when several race for it. Claimed messages get state ``claimed``,
        ``processed`` True, the claim ``token`` and a lease that ends ``lease``
        seconds from now. Returns the claimed messages in id order; [] if
        none were still available.
        """
        raise NotImplementedError

    def renew(self, name, token, lease):
        """Extend the lease of the messages claimed with ``token`` to ``lease`` seconds from now.

        Returns how many messages are still held under ``token``; 0 means the
        lease was lost (it expired and the messages went back to the stream).
        """
        raise NotImplementedError

    def commit(self, name, token, ids, keep=False, window_id=None):
        """Mark the window claimed with ``token`` as successfully processed.

        Only messages among ``ids`` still held under ``token`` are affected,
        so a consumer whose lease was lost cannot commit another's claim.
        Removes the messages unless ``keep`` is true, in which case they stay
        with state ``done``. Atomic per message. With ``window_id``, that
        window record is marked processed too (in the same transaction where
        the store has transactions, right after otherwise). Returns the number
        of messages committed.
        """
        raise NotImplementedError

    def release(self, name, token, ids, error=None, max_attempts=3, backoff=0.0):
        """Give back a failed window: count an attempt, retry later or dead-letter.

        For each message among ``ids`` held under ``token``: ``attempts`` goes
        up by one and ``error`` is recorded; if ``attempts`` reaches
        ``max_attempts`` the message becomes ``dead`` (kept for inspection and
        ``requeue()``), otherwise it waits in state ``retry`` for ``backoff``
        seconds and then becomes available again (see ``expire_leases``).
        A ``backoff`` of 0 makes it available at once. Atomic per message.
        Returns ``(retried, dead)`` counts.
        """
        raise NotImplementedError

    def unclaim(self, name, token, ids):
        """Give back messages without counting an attempt (graceful stop, partial claim).

        They become available at once. Atomic per message. Returns how many were given back.
        """
        raise NotImplementedError

    def expire_leases(self, name, max_attempts=3):
        """Make messages whose lease or retry backoff is over available again.

        A ``claimed`` message whose lease ended (its consumer died or hung)
        counts one attempt and becomes ``dead`` if that reaches
        ``max_attempts``; a ``retry`` message whose backoff ended becomes
        available without a new attempt. Atomic per message (safe to run from
        every consumer at once). Returns the number of messages changed.
        """
        raise NotImplementedError

    # -- dead letters -----------------------------------------------------
    def dead_letters(self, name, limit=None):
        """Return the dead messages of ``name`` (with ``attempts`` and ``error``), oldest first."""
        raise NotImplementedError

    def requeue(self, name, ids=None):
        """Make dead messages available again with ``attempts`` reset to 0.

        ``ids`` None means every dead message of the stream. Atomic per
        message. Returns the number requeued (0 when there are none).
        """
        raise NotImplementedError

    def purge_dead(self, name, ids=None):
        """Delete dead messages (all of the stream's if ``ids`` is None). Removes data; returns the count."""
        raise NotImplementedError

    # -- windows ----------------------------------------------------------
    def save_window(self, name, data, query=None):
        """Record an emitted window (``processed`` False). One write; returns its id."""
        raise NotImplementedError

    def mark_window(self, window_id, processed=True):
        """Set ``processed`` of a window record. Returns None; a missing record is ignored."""
        raise NotImplementedError

    def windows(self, name, processed=None):
        """Return the :class:`WindowRecord` list of ``name``, oldest first, optionally by ``processed``."""
        raise NotImplementedError

    # -- consumers --------------------------------------------------------
    def heartbeat(self, name, consumer, info):
        """Record that ``consumer`` (an id unique per consumer) of stream ``name`` is alive.

        ``info`` is a dict of plain values (host, pid, counters, rate); the
        record is replaced as a whole (last call wins) and stamped with ``seen``
        (now, naive UTC). One write, atomic. Returns None.
        """
        raise NotImplementedError

    def consumers(self, name):
        """Return the consumer records of ``name``: dicts of their ``info`` plus ``id`` and ``seen``.

        Read-only; ordered by id; [] when no consumer ever reported. Records
        stay after a consumer stopped or died (``seen`` tells), until
        ``forget_consumers`` removes them.
        """
        raise NotImplementedError

    def forget_consumers(self, name, older_than):
        """Remove consumer records of ``name`` not seen for ``older_than`` seconds. Removes data; returns the count."""
        raise NotImplementedError

    # -- inspection and housekeeping --------------------------------------
    def messages(self, name, state=None, limit=None):
        """Return messages of ``name`` in any (or the given) state, oldest first. Read-only."""
        raise NotImplementedError

    def counts(self, name):
        """Return a dict with the number of messages per state (every key of STATES), ``windows`` and ``expired``.

        ``expired`` is the running total of messages the retention limit
        (``max_age``, :meth:`housekeep`) removed before they were processed.
        Read-only; all zeros for an empty or unknown stream.
        """
        raise NotImplementedError

    def housekeep(self, name, max_age):
        """Apply the retention limit: remove what stream ``name`` holds that was created over ``max_age`` s ago.

        Removes data, processed or not: messages waiting (available, due for
        a retry) and done, and processed window records. Claimed messages are
        left to the consumer holding them (a later round removes them if they
        come back), and dead letters stay until purged: they are kept to be
        inspected. The number of messages removed before they were processed
        is added to the stream's ``expired`` total (see :meth:`counts`), in
        the same transaction where the store has them (SQLite; MongoDB adds
        it right after the delete). Returns ``(removed, expired)``: records
        removed in all, and how many of them were never processed; ``(0, 0)``
        when nothing is that old.
        """
        raise NotImplementedError

    # -- wake-ups ---------------------------------------------------------
    def waiter(self, name):
        """Return a :class:`Waiter` for new messages of ``name``.

        Stores with ``push_wakeups`` return one that wakes as soon as a message
        is appended; the default just sleeps for the timeout.
        """
        return Waiter(self, name)
