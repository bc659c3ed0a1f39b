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

    It listens on the app's broker connection (``celeryapp.connection_for_read()``).
    A broker that cannot be reached or goes away logs one line on
    ``minibatch.contrib`` and is retried with a growing pause (see
    :class:`~minibatch.contrib.base.Source`); events sent meanwhile are not
    seen. ``stream.stop()`` ends the source within about ``poll_interval``
    seconds. Non-blocking to construct: nothing connects before ``stream()``.

    :param celeryapp: the ``celery.Celery`` app whose broker carries the events
    :param events: event types to record (a name or a list, e.g.
        ``['task-succeeded', 'task-failed']``); default ``None`` (or ``'*'``):
        every task event
    :raises ConfigurationError: ``celeryapp`` is not a Celery app, or an event name is unknown
    :raises MissingDependencyError: celery is not installed
    """
    #: seconds the receiver waits for an event before it checks for stop()
    poll_interval = 0.25

    def __init__(self, celeryapp, events=None):
        require('celery', 'celery')
        super().__init__()
        if not (hasattr(celeryapp, 'events') and hasattr(celeryapp, 'connection_for_read')):
            raise ConfigurationError(f'CeleryEventSource needs a celery.Celery app, got {celeryapp!r}')
        self.celeryapp = celeryapp
        self.events = self._check_events(events)
        self.state = celeryapp.events.State()
        self._receiver = None

    @staticmethod
    def _check_events(events):
        if events is None or events == '*':
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

    def run(self, stream):
        app = self.celeryapp
        with app.connection_for_read() as connection:
            # one attempt: the retries (and their log lines) are Source.stream's, not kombu's
            connection.ensure_connection(max_retries=0)
            receiver = app.events.Receiver(connection, handlers={'*': lambda event: self._record(stream, event)})
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
                for _ in receiver.consume(limit=None, timeout=None, safety_interval=self.poll_interval,
                                          wakeup=False):
                    pass
            finally:
                self._receiver = None
                self.ready.clear()

    def _record(self, stream, event):
        """Feed the state with a task event and append it if it is one of ``self.events``."""
        kind = event.get('type', '')
        if not kind.startswith('task-'):
            return  # worker heartbeats and the like
        task = None
        try:
            (task, _), _ = self.state.event(event)
        except (KeyError, TypeError, ValueError):
            # an event without the fields State needs (uuid, hostname, clock) is still recorded
            task = self.state.tasks.get(event.get('uuid'))
        if kind not in self.events:
            return
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
        return f'CeleryEventSource({self.celeryapp.main or "celery"!r})'


def _state_of(kind):
    """The task state an event of type ``kind`` announces ('task-failed' -> 'FAILURE'), or None."""
    from celery.events.state import TASK_EVENT_TO_STATE
    return TASK_EVENT_TO_STATE.get(kind.partition('-')[2])


__all__ = ['CeleryEventSource', 'TASK_EVENTS']
