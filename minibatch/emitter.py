"""The base of window strategies: :class:`WindowEmitter`, the hooks a strategy overrides.

A :class:`WindowEmitter` runs rounds. Each round it

1. ``window_ready()`` -> ``(ready, query_args)``: is there a window to cut?
2. ``query(*query_args)`` -> the candidate messages (read-only);
3. ``process(messages)`` -> the messages it could claim (atomic, with a lease);
4. ``emit(messages)`` -> hands the window to the executor;
5. later, when the function returned: ``commit(messages, window)`` (and the
   sink got the result), or ``undo(messages, window, error)`` when it raised.

Subclasses override any step (see docs/windows.rst); ``due_in()`` tells when a
strategy needs a round whatever arrives (time windows). The loop around the
steps (executor, leases, waiting, stopping) is :class:`minibatch.runner.Runner`;
``emitter.run()`` starts it. Claims carry a lease the runner renews while the
function runs; a consumer that dies leaves leases that expire, so its messages
are delivered again by another consumer. The strategies minibatch ships are in
:mod:`minibatch.window`.
"""
import datetime
import logging
import os
import socket
import uuid

from minibatch import bindings
from minibatch.asyncio_executor import is_async
from minibatch.errors import ConfigurationError
from minibatch.groups import Membership
from minibatch.legacy import LegacyEmitterAPI
from minibatch.options import ConsumerOptions, refuse_unknown
from minibatch.runner import Runner
from minibatch.inflight import summary
from minibatch.store import resolve_url, store_class
from minibatch.store.base import Message, group_stream

logger = logging.getLogger('minibatch.window')


class WindowEmitter(LegacyEmitterAPI):
    """Base class of window strategies: the hooks a strategy overrides, and ``run()`` to consume.

    :param stream: stream name or :class:`~minibatch.models.Stream`
    :param interval: the strategy's parameter (seconds for time windows, the
        window size for :class:`CountWindow`)
    :param emitfn: the function called with each :class:`~minibatch.models.Window`
    :param processfn: optional ``fn(messages) -> messages`` applied to claimed messages before emitting
    :param executor: see :func:`minibatch.executors.make_executor`; default a process pool
    :param workers: parallel windows (and pool size); default the number of CPUs
    :param keep: keep committed messages (state ``done``) instead of deleting them
    :param sink: object with ``put(data)``; gets the function's result (or the window data)
    :param queue: a ``multiprocessing.Queue``; putting ``True`` stops the emitter
    :param emit_empty: call the function for empty time windows too
    :param max_attempts: deliveries of a message before it is dead-lettered (>= 1)
    :param lease: seconds a claim is held without renewal; renewed every third of it
    :param retry_backoff: first delay before a failed window is retried; doubles per attempt, at most 60 s
    :param isolate: split a failing window into halves, recursively, so that only the messages that fail
        alone count attempts and end in the dead letters (see :meth:`split`); default False
    :param timeout: seconds a window's function may run, or None (no limit, the default); past it the
        window is a failed attempt (see docs/reliability.rst, "Timeouts")
    :param stop_grace: seconds a stopping consumer waits for its windows in flight; default ``STOP_GRACE``
    :param url: store URL, used when ``stream`` is a name
    """
    #: longest idle sleep between polls when the store cannot push wake-ups
    MAX_POLL = 1.0
    #: longest idle sleep when it can (the wake-up comes first anyway)
    MAX_PUSH_WAIT = 5.0
    #: stop waiting for in-flight windows this long after a stop was asked
    STOP_GRACE = 30.0
    #: seconds between the reports a running consumer writes for stream.stats()
    HEARTBEAT = 5.0
    #: an idle consumer notices stop() (or SIGTERM) within this many seconds
    STOP_CHECK = 0.25
    #: refuse keywords no built-in strategy knows (the strategies minibatch ships set it; a subclass
    #: that does not set it itself receives unknown keywords in ``self.kwargs``, as in 0.6)
    strict_options = False
    #: a named group's consumer reads its group stream with find_available and claim (all count and time
    #: windows, and 0.6 emitters through query()): the store may then give the stream's messages in place
    #: instead of copies (minibatch.groups.Membership). Strategies with their own reads set it False.
    reads_groups_in_place = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'strict_options' not in cls.__dict__:
            cls.strict_options = False

    def __init__(self, stream_name, interval=None, processfn=None, emitfn=None, emit_empty=False, executor=None,
                 max_workers=None, stream=None, stream_url=None, forwardfn=None, queue=None, *, size=None,
                 workers=None, keep=False, sink=None, max_attempts=3, lease=60.0, retry_backoff=1.0, url=None,
                 cnx_kwargs=None, concurrency=None, isolate=False, timeout=None, stop_grace=None, group=None,
                 start='earliest', **kwargs):
        # the positional order and the names stream=, stream_url=, forwardfn= are minibatch 0.6's
        if self.strict_options:
            # a typo (max_attemps=5) must not be ignored; custom emitters get their own keywords in self.kwargs
            refuse_unknown(kwargs, type(self).__name__)
        if stream is not None:
            stream_name = stream
        url = url if url is not None else stream_url
        if sink is None and forwardfn is not None:
            sink = _CallableSink(forwardfn)
        #: the consumer's options, validated (see :class:`minibatch.options.ConsumerOptions`)
        self.options = ConsumerOptions(processfn=processfn, executor=executor,
                                       workers=workers if workers is not None else max_workers,
                                       keep=keep, sink=sink, queue=queue, emit_empty=emit_empty,
                                       max_attempts=max_attempts, lease=lease, retry_backoff=retry_backoff,
                                       concurrency=concurrency, isolate=isolate, timeout=timeout,
                                       stop_grace=stop_grace, group=group, start=start)
        self._stream_arg = stream_name
        #: the stream producers append to
        self.source_name = stream_name if isinstance(stream_name, str) else stream_name.name
        #: the consumer group (None: the default group); see docs/groups.rst
        self.group = self.options.group
        #: the stream this consumer claims from: the group's copies, or the stream itself
        self.stream_name = self.source_name if self.group is None else group_stream(self.source_name, self.group)
        self._membership = None
        self.url = url
        self.cnx_kwargs = cnx_kwargs or {}
        #: the strategy's parameter: 1 by default (as in 0.6); a custom emitter given only size= sees it here
        self.interval = interval if interval is not None else (size if size is not None else 1)
        #: the size= given to @streaming / make_emitter, if any
        self.size = size
        self.emitfn = emitfn
        # the options as attributes, where strategies (and 0.6 emitters) read and may change them
        options = self.options
        self.processfn, self.executor_arg, self.workers = options.processfn, options.executor, options.workers
        self.keep, self.sink, self.queue, self.emit_empty = options.keep, options.sink, options.queue, \
            options.emit_empty
        self.max_attempts, self.lease, self.retry_backoff = options.max_attempts, options.lease, \
            options.retry_backoff
        self.concurrency = options.concurrency
        self.isolate = options.isolate
        self.timeout = options.timeout
        if self.concurrency is not None and emitfn is not None and not is_async(emitfn):
            raise ConfigurationError('concurrency= is for async def functions (windows awaiting on an event '
                                     'loop); for a plain function use workers=')
        #: extra keyword arguments of @streaming, for custom emitters
        self.kwargs = kwargs
        #: the exception that ended a background consumer (streaming(blocking=False)), else None
        self.error = None
        self._stream = None
        self._runner = None
        #: counts for this emitter's lifetime, e.g. for tests and status pages: windows emitted,
        #: windows committed and failed, messages emitted, committed (processed) and dead-lettered
        self.stats = {'windows': 0, 'committed': 0, 'failed': 0, 'messages': 0, 'processed': 0, 'dead': 0}
        #: this consumer's id in stream.stats()['consumers']
        self.consumer_id = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}'

    # -- resources --------------------------------------------------------
    @property
    def stream(self):
        """The :class:`~minibatch.models.Stream` this emitter consumes (created if needed)."""
        if self._stream is None:
            if not isinstance(self._stream_arg, str) and self.group is None:  # a Stream object was given
                self._stream = self._stream_arg
            elif not isinstance(self._stream_arg, str):  # its group's copies, on the same store
                store = self._stream_arg.store
                self._stream = type(self._stream_arg)._from_info(store, store.ensure_stream(self.stream_name))
            else:
                self._stream = bindings.get('stream').get_or_create(self.stream_name, url=self.url,
                                                                    **self.cnx_kwargs)
        return self._stream

    @property
    def store(self):
        return self.stream.store

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]:
        """The store's "briefly unreachable" exceptions, known without reaching it (its class says which)."""
        if self._stream is not None:
            return self._stream.store.transient_errors
        if not isinstance(self._stream_arg, str):
            return self._stream_arg.store.transient_errors
        return store_class(resolve_url(self.url)).transient_errors

    @property
    def membership(self):
        """This consumer's :class:`~minibatch.groups.Membership` of its group (docs/groups.rst)."""
        if self._membership is None:
            self._membership = Membership(self.store, self.source_name, self.group, self.options.start, self.keep,
                                          in_place=self.reads_groups_in_place)
        return self._membership

    def commits_output(self, sink):
        """Whether a window's result for ``sink`` goes into the commit (exactly once) rather than ``sink.put()``.

        True when ``sink`` is a stream of this consumer's store and the
        strategy commits with :meth:`commit` as written here (a strategy of its
        own ``commit`` may not pass the output on: its sink gets ``put()``).
        """
        store = getattr(sink, 'store', None) if isinstance(getattr(sink, 'name', None), str) else None
        return (store is not None and type(self).commit is WindowEmitter.commit
                and (store is self.store or (type(store) is type(self.store) and store.url == self.store.url)))

    @property
    def commit_keep(self):
        """Whether commits keep messages (``done``): ``keep=True``, or another group may still need them."""
        return self.keep or self.membership.keeps_messages

    @property
    def stop_grace(self) -> float:
        """Seconds a stopping consumer waits for its windows in flight: ``stop_grace=``, else ``STOP_GRACE``."""
        return self.STOP_GRACE if self.options.stop_grace is None else self.options.stop_grace

    @property
    def runner(self) -> Runner:
        """The :class:`~minibatch.runner.Runner` that runs this strategy (its consumer loop)."""
        if self._runner is None:
            self._runner = Runner(self)
        return self._runner

    @property
    def capacity(self) -> int:
        """Windows this consumer runs at once (its executor's workers); 0 before it started."""
        return self.runner.capacity

    @property
    def _executor(self):
        return self.runner.executor

    def _setup(self, waiter=True):
        self.runner.setup(waiter=waiter)

    def close(self):
        """Shut down the executor minibatch created (and the wake-up watcher). Idempotent.

        A blocking ``run()`` does this when it ends; after ``run(blocking=False)``
        rounds the pool is kept for the next round, so call ``close()`` when done.
        """
        self.runner.teardown()

    # -- the overridable steps --------------------------------------------
    def window_ready(self):
        """Return ``(ready, query_args)``; ``query(*query_args)`` is called when ready."""
        raise NotImplementedError

    def query(self, *args):
        """Return the candidate messages of the next window (read-only; ``process`` claims them)."""
        raise NotImplementedError

    def buffer(self, limit=None, until=None):
        """Messages waiting in the stream, oldest first, as :class:`~minibatch.store.base.Message`.

        The store-independent way for custom emitters to look at the stream
        (``Buffer.objects`` works on MongoDB only).
        """
        return self.store.find_available(self.stream_name, limit=limit, until=until)

    def process(self, qs):
        """Claim the messages ``qs`` atomically; return those this consumer now holds.

        ``qs`` may hold :class:`Message` objects, ``Buffer`` documents or ids.
        Messages another consumer took first are silently left out; the rest
        keep the order of ``qs`` (a custom emitter may have sorted them).
        With a ``processfn``, what it returns is the window (see :meth:`select`).
        """
        return self.select(self.claim(qs))

    def claim(self, qs):
        """Claim ``qs`` atomically under one new lease token; return the claimed, in the order of ``qs``."""
        if not qs:
            return []
        items = qs if type(qs) is list and all(type(m) is Message for m in qs) else [_as_claimable(m) for m in qs]
        token = uuid.uuid4().hex
        claimed = self.store.claim(self.stream_name, items, token, self.lease)
        if self.group is not None:
            self.membership.claimed(len(claimed))
        if not _in_order_of(claimed, items):
            position = {getattr(item, 'id', item): i for i, item in enumerate(items)}
            claimed.sort(key=lambda m: position.get(m.id, len(position)))
        for message in claimed:
            message.token = token
        return claimed

    def select(self, claimed):
        """Apply ``processfn`` to a claimed window: what it returns is emitted.

        Claimed messages it leaves out are committed at once (they are done,
        not lost, and not delivered again); without a ``processfn`` the
        window is ``claimed`` unchanged. An empty result emits nothing unless
        ``emit_empty``.
        """
        if not claimed or self.processfn is None:
            return claimed
        kept = list(self.processfn(claimed) or [])
        dropped = {m.id for m in claimed} - {getattr(m, 'id', None) for m in kept}
        if dropped:
            done = self.store.commit(self.stream_name, claimed[0].token, list(dropped), keep=self.commit_keep)
            self.stats['processed'] += done
        return kept

    def emit(self, qs, query_args=None):
        """Record a window of the claimed messages ``qs`` and submit the function. Returns the Window."""
        window = self._window_of(qs)
        self.stats['windows'] += 1
        self.stats['messages'] += len(qs)
        self.runner.submit(qs, window)
        return window

    def _window_of(self, qs):
        """A new Window of the claimed messages ``qs`` (recorded now with ``keep=True``, else at its commit)."""
        data = [m.data for m in qs]
        if self.keep:
            return bindings.get('window').for_data(self.stream_name, data,
                                                   id=self.store.save_window(self.stream_name, data,
                                                                             token=qs[0].token if qs else None))
        # no record yet: commit() writes it, without a copy of data the commit deletes (one write less)
        window = bindings.get('window').for_data(self.stream_name, data)
        window._record_at_commit = True
        return window

    def commit(self, qs, window):
        """The window succeeded: remove (or keep, with ``keep=True``) its messages; mark the window processed.

        With ``store.commit_soon``: the embedded store carries the commit in the
        next claim's transaction (or the runner's flush when no claim comes), and
        ``window.processed``, ``window.id`` and the figures follow once it is committed.
        """
        token = qs[0].token if qs else None
        at_commit = getattr(window, '_record_at_commit', False)
        window._record_at_commit = False

        def committed(done, window_id):
            window.id = window_id
            if done < len(qs):
                logger.warning('minibatch: %d of %d messages of a window on %r were no longer held under its '
                               'claim (its lease ran out and they went back to the stream, or the stream was '
                               'cleared or deleted meanwhile); those still in the stream are delivered again',
                               len(qs) - done, len(qs), self.stream_name)
            window.processed = True
            self.stats['committed'] += 1
            self.stats['processed'] += done
        self.store.commit_soon(self.stream_name, token, [m.id for m in qs], committed, keep=self.commit_keep,
                               window_id=None if at_commit else window.id, record=at_commit,
                               data=list(window.data) if (self.keep and at_commit) else None,
                               output=getattr(window, '_output', None))

    def flush(self):
        """Write now the commits left for later (the runner calls it when a round cuts no window, and at the end).

        The default writes those the store queued (``store.commit_soon``); a
        strategy that gathers commits of its own writes them too.
        """
        self.store.flush()

    def undo(self, qs, window=None, error=None):
        """The window failed: count an attempt per message, retry after a backoff or dead-letter.

        With ``isolate=True`` a window of more than one message is split instead (:meth:`split`),
        unless its worker process died (that has its own isolation: see docs/reliability.rst).
        """
        if getattr(window, '_split', False):
            return  # settled again after an interrupted split: its halves are settled on their own
        self.stats['failed'] += 1
        if not qs:
            return
        if self.isolate and len(qs) > 1 and not getattr(window, '_worker_died', False):
            self.split(qs, window, error)
            return
        attempts = max(m.attempts for m in qs)
        backoff = min(self.retry_backoff * (2 ** attempts), 60.0) if self.retry_backoff else 0.0
        retried, dead = self.store.release(self.stream_name, qs[0].token, [m.id for m in qs], error=error,
                                           max_attempts=self.max_attempts, backoff=backoff)
        self.stats['dead'] += dead
        if retried:
            self.runner.retry_due_in(backoff)
        if dead:
            logger.error('minibatch: %d messages of stream %r dead-lettered after %d attempts: %s',
                         dead, self.stream_name, self.max_attempts, summary(error))
        else:
            logger.warning('minibatch: window of %d messages on %r failed (attempt %d of %d), retrying in %.1fs: %s',
                           len(qs), self.stream_name, attempts + 1, self.max_attempts, backoff, summary(error))

    def split(self, qs, window=None, error=None):
        """Run the two halves of the failed window ``qs`` as windows of their own, at once; count no attempt.

        Bisection, as AWS Lambda's BisectBatchOnFunctionError: a half that succeeds is committed, a half
        that fails is split again, and a message that fails alone is released as usual (an attempt,
        then a retry after the backoff, or the dead letters). The halves keep the window's claim (its
        token, whose lease is renewed while any of them runs), so no other consumer, and no window
        strategy, can merge them into a new window meanwhile. A message goes through at most
        ``ceil(log2(size))`` splits per attempt: a window of ``n`` messages costs at most ``2n - 1``
        calls per attempt, ``n`` of them alone.
        """
        middle = (len(qs) + 1) // 2
        halves = [qs[:middle], qs[middle:]]
        # the windows first (keep=True writes their records): if the store fails here, the runner
        # calls undo() again and nothing was submitted twice
        windows = [self._window_of(half) for half in halves]
        if window is not None:
            window._split = True
        logger.warning('minibatch: window of %d messages on %r failed; running its halves (%d and %d messages) '
                       'alone to isolate the failing ones: %s', len(qs), self.stream_name, len(halves[0]),
                       len(halves[1]), summary(error))
        for i, (half, part) in enumerate(zip(halves, windows)):
            try:
                self.stats['windows'] += 1
                self.stats['messages'] += len(half)
                self.runner.submit(half, part)
            except BaseException:
                # not started (Ctrl-C in an inline function, a pool broken twice): submit gave this half
                # back; give back the halves not submitted yet, untouched, and let the runner go on
                for rest in halves[i + 1:]:
                    self.runner.give_back(rest)
                raise

    def timestamp(self, *args):
        """Note that a window was cut (time windows record ``last_read``). Returns the time used."""
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def sleep(self):
        """Wait before the next round: until a function finishes, a message arrives, or a poll is due.

        Waiting costs no store queries (see :meth:`minibatch.runner.Runner.wait`).
        """
        self.runner.wait()

    def due_in(self) -> float:
        """Seconds until this strategy must run a round whatever arrives (a time window's slot ends).

        ``inf`` (the default) when only new messages can make a window ready.
        """
        return float('inf')

    # -- running ----------------------------------------------------------
    def run(self, blocking=True):
        """Consume the stream: until ``stop()``, ``True`` on the queue, SIGTERM or Ctrl-C.

        ``blocking=False`` runs exactly one round: at most one window is cut,
        and the call returns once it is committed or undone.
        """
        self.runner.run(blocking=blocking)
        return self

    def stop(self):
        """Ask a running emitter to stop (from any thread): in-flight windows finish, no new ones start."""
        self.runner.stop_event.set()

    @property
    def stopped(self):
        return self.runner.stop_event.is_set()

    def _should_stop(self):
        return self.runner.should_stop()


class _CallableSink:
    """A sink around a plain callable: minibatch 0.6's ``forwardfn=``."""

    def __init__(self, fn):
        self.put = fn


def _in_order_of(claimed, items):
    """True when ``claimed`` are ``items`` themselves, in their order (the usual case: no sort needed)."""
    return len(claimed) == len(items) and all(c is i for c, i in zip(claimed, items))


def _as_claimable(item):
    if isinstance(item, Message):
        return item
    pk = getattr(item, 'pk', None)
    if pk is not None:
        return pk
    if isinstance(item, dict):
        return item.get('_id', item.get('id'))
    return item


def validate_emitter_class(emitter):
    if not (isinstance(emitter, type) and issubclass(emitter, WindowEmitter)):
        raise ConfigurationError(f'emitter must be a WindowEmitter subclass, got {emitter!r}')
    return emitter
