"""Celery: a stream of the task events of a Celery app (:class:`CeleryEventSource`).

Needs celery (``pip install 'minibatch[celery]'``, which brings the Redis
transport). Workers must send events: start them with ``-E`` (or set
``worker_send_task_events = True``); ``task-sent`` events also need
``task_send_sent_event = True`` on the app that sends the tasks.

Delivery: Celery events are a live broadcast, not a queue. The receiver does
not acknowledge them, and an event published while the source is not
connected is never seen by it. The source therefore records what happens
while it listens; it is a monitor, not a replacement for the result backend.
"""
import functools
import json

from minibatch.contrib.base import Source, require
from minibatch.errors import ConfigurationError

#: the task events a Celery worker (or client, for task-sent) can send
TASK_EVENTS = ('task-sent', 'task-received', 'task-started', 'task-succeeded', 'task-failed',
               'task-rejected', 'task-revoked', 'task-retried')


def _json_safe(value):
    """``value`` as plain JSON types; anything else (bytes, datetimes, objects) as its str()."""
    return json.loads(json.dumps(value, default=str))


class CeleryEventSource(Source):
    """Append one message per task event of ``celeryapp`` to the stream.

    Each message is a dict::

        {'task_event': 'task-succeeded',     # the event type
         'task_name': 'tasks.add',           # None if never learnt (see below)
         'task_id': '6f0e...',
         'task_state': 'SUCCESS',            # the state this event puts the task in
         'task_runtime': 0.0012,             # seconds, task-succeeded only, else None
         'task_info': {...}}                 # the event itself, JSON-safe

    Only ``task-received`` (and ``task-sent``) events carry the task's name;
    the source keeps a ``celeryapp.events.State()`` (``self.state``) fed with
    every task event, so later events of the same task get the name too, as
    long as the source saw the earlier event.

    It listens on the app's broker connection (``celeryapp.connection_for_read()``,
    or ``celeryapp.connection()`` for an object that only has that).
    A broker that cannot be reached or goes away logs one line on
    ``minibatch.contrib`` and is retried with a growing pause (see
    :class:`~minibatch.contrib.base.Source`); events sent meanwhile are not
    seen. ``stream.stop()`` ends the source within about ``poll_interval``
    seconds. Non-blocking to construct: nothing connects before ``stream()``.

    The receiver gets :attr:`handlers`, as in 0.6: ``'*'`` feeds
    :attr:`state` with every event, and each recorded event type has a handler
    that feeds the state and appends the message. Anything shaped like a
    Celery app will do (``connection()``, ``events.Receiver(...)``,
    ``events.State()``), a test double included; a receiver without
    ``consume()`` is run with ``capture()``, as 0.6 ran it.

    :param celeryapp: the ``celery.Celery`` app (or an object shaped like one)
        whose broker carries the events
    :param events: event types to record (a name or a list); default ``None``:
        :attr:`default_events`, ``('task-succeeded', 'task-failed')`` as in
        0.6; ``'*'``: every task event
    :raises ConfigurationError: ``celeryapp`` is not shaped like a Celery app, or an event name is unknown
    :raises MissingDependencyError: celery is not installed
    """
    #: seconds the receiver waits for an event before it checks for stop()
    poll_interval = 0.25
    #: the events recorded when ``events`` is not given (0.6's default)
    default_events = ('task-succeeded', 'task-failed')

    def __init__(self, celeryapp, events=None):
        require('celery', 'celery')
        super().__init__()
        if not (hasattr(celeryapp, 'events') and
                (hasattr(celeryapp, 'connection_for_read') or hasattr(celeryapp, 'connection'))):
            raise ConfigurationError(f'CeleryEventSource needs a celery.Celery app (with events and '
                                     f'connection()), got {celeryapp!r:.100}')
        self.celeryapp = celeryapp
        self.events = self._check_events(events)
        self.state = celeryapp.events.State()
        self._receiver = None
        self._stream = None  # the stream the handlers append to, set when the source starts

    @classmethod
    def _check_events(cls, events):
        if events is None:
            return frozenset(cls.default_events)
        if events == '*':
            return frozenset(TASK_EVENTS)
        names = [events] if isinstance(events, str) else list(events)
        if '*' in names:
            return frozenset(TASK_EVENTS)
        unknown = [name for name in names if name not in TASK_EVENTS]
        if unknown or not names:
            raise ConfigurationError(f'unknown Celery task event(s) {unknown or names!r}; '
                                     f'choose from {", ".join(TASK_EVENTS)}')
        return frozenset(names)

    def cancel(self):
        super().cancel()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True  # the receiver checks it between two waits of poll_interval

    stop = cancel

    @property
    def recv(self):
        """The event receiver while the source listens, else None (0.6's name)."""
        return self._receiver

    @property
    def handlers(self):
        """The receiver's handlers, event type -> callable(event), as 0.6 had them.

        ``'*'`` feeds :attr:`state` with any event without its own handler;
        each type in :attr:`events` feeds the state and appends the message
        to the stream the source feeds (an event passed without a ``type``
        counts as the handler's type).
        """
        handlers = {'*': self._observe}
        for kind in sorted(self.events):
            handlers[kind] = functools.partial(self._on_event, kind)
        return handlers

    def stream(self, stream):
        """Feed ``stream`` until :meth:`cancel` (see :class:`~minibatch.contrib.base.Source`)."""
        self._stream = stream
        super().stream(stream)

    def _connection(self):
        app = self.celeryapp
        connect = getattr(app, 'connection_for_read', None) or app.connection
        return connect()

    def run(self, stream):
        app = self.celeryapp
        with self._connection() as connection:
            ensure = getattr(connection, 'ensure_connection', None)
            if ensure is not None:
                # one attempt: the retries (and their log lines) are Source.stream's, not kombu's
                ensure(max_retries=0)
            receiver = app.events.Receiver(connection, handlers=self.handlers)
            receiver.connect_max_retries = 0
            iterations = 0

            def on_iteration():
                # called before each wait for events; the broker subscription is made in the first
                # wait, so from the second call on events reach us
                nonlocal iterations
                iterations += 1
                if iterations == 2:
                    self.ready.set()
                    self.progress()

            receiver.on_iteration = on_iteration
            self._receiver = receiver
            if self.cancelled:  # stop() came before the receiver existed
                return
            try:
                if hasattr(receiver, 'consume'):
                    for _ in receiver.consume(limit=None, timeout=None, safety_interval=self.poll_interval,
                                              wakeup=False):
                        pass
                else:  # an app-shaped object whose receiver only captures, as 0.6 called it
                    receiver.capture(limit=None, timeout=None, wakeup=False)
                    # its capture() returned: it has no more events (0.6's stream() returned here too)
                    self._cancelled.set()
            finally:
                self._receiver = None
                self.ready.clear()

    def _observe(self, event):
        """Feed the state with an event; returns the task it concerns, or None."""
        try:
            (task, _), _ = self.state.event(event)
            return task
        except (KeyError, TypeError, ValueError):
            # an event without the fields State needs (uuid, hostname, clock) is still recorded
            return getattr(self.state, 'tasks', {}).get(event.get('uuid'))

    def _on_event(self, kind, event):
        """The handler of event type ``kind``: feed the state, append the message."""
        kind = event.get('type') or kind
        if kind not in self.events:
            self._observe(event)  # called for another type than registered: only remember it
            return
        if self._stream is None:
            raise RuntimeError(f'{self} received an event but is not attached to a stream (stream.attach(source))')
        self._record(self._stream, kind, event, self._observe(event))

    def _record(self, stream, kind, event, task):
        """Append the message of a task event of type ``kind``."""
        name = event.get('name') or getattr(task, 'name', None)
        state = _state_of(kind) or getattr(task, 'state', None)
        stream.append({
            'task_event': kind,
            'task_name': name,
            'task_id': event.get('uuid'),
            'task_info': _json_safe(event),
            'task_state': state,
            'task_runtime': event.get('runtime'),
        })

    def __repr__(self):
        return f'CeleryEventSource({getattr(self.celeryapp, "main", None) or "celery"!r})'


def _state_of(kind):
    """The task state an event of type ``kind`` announces ('task-failed' -> 'FAILURE'), or None."""
    from celery.events.state import TASK_EVENT_TO_STATE
    return TASK_EVENT_TO_STATE.get(kind.partition('-')[2])


__all__ = ['CeleryEventSource', 'TASK_EVENTS']
