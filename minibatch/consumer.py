"""``@streaming`` and ``make_emitter``: turning a function into a stream consumer."""
import logging
import threading

from minibatch.errors import ConfigurationError, InvalidWindowSpec
from minibatch.eventtime import EventTimeWindow
from minibatch.eventtime.spec import count
from minibatch.window import CountWindow, FixedTimeWindow, RelaxedTimeWindow, validate_emitter_class

logger = logging.getLogger(__name__)

#: keywords of event-time windows besides window= (see minibatch.eventtime.spec.EventTimeSpec)
EVENT_TIME_KEYWORDS = ('key', 'time', 'grace', 'on_late', 'close_by_clock')


def _check_window_args(size, interval):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InvalidWindowSpec(f'size must be an integer >= 1, got {size!r}')
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                 or interval <= 0):
        raise InvalidWindowSpec(f'interval must be a number of seconds > 0, got {interval!r}')


def make_emitter(name, emitfn=None, interval=None, size=None, relaxed=False, url=None, sink=None, emitter=None,
                 keep=False, queue=None, source=None, cnx_kwargs=None, executor=None, workers=None,
                 max_workers=None, window=None, **kwargs):
    """Build the window emitter for stream ``name`` without running it.

    ``window=tumbling(s)`` / ``hopping(s, step)`` / ``session(gap)`` makes an event-time
    consumer (:class:`~minibatch.eventtime.EventTimeWindow`) with ``key=``, ``time=``,
    ``grace=``, ``on_late=`` and ``close_by_clock=`` (see docs/windows.rst); ``size=`` or
    ``interval=`` cannot be given with it, and those keywords need it, except ``size=N,
    key=...``: count windows per key (each key's messages, N at a time, in append order).

    Otherwise the strategy, as in minibatch 0.6:

    - ``emitter=Class``: that :class:`~minibatch.window.WindowEmitter`
      subclass, given ``size=`` and ``interval=`` as passed (a custom emitter
      that gets only ``size`` sees it as ``interval`` too, see docs/windows.rst);
    - else ``interval=S``: a :class:`FixedTimeWindow`, or a
      :class:`RelaxedTimeWindow` with ``relaxed=True`` (note: ``relaxed``
      defaults to False here and to True in :func:`streaming`, as in 0.6);
      a ``size`` given too is ignored, as 0.6 did, with a warning;
    - else a :class:`CountWindow` of ``size`` messages (default 1).

    ``source=`` attaches a source to the stream first. Other keyword
    arguments reach the emitter class.

    :raises minibatch.errors.InvalidWindowSpec: out-of-range window arguments
    :raises minibatch.errors.ConfigurationError: a bad stream name, ``executor=`` or ``workers=``
    """
    from minibatch.models import Stream
    if not isinstance(name, Stream) and (not isinstance(name, str) or not name):
        raise ConfigurationError(f'a stream name must be a non-empty string, got {name!r}')
    workers = workers if workers is not None else max_workers
    _check_window_args(size, interval)  # the consumer options are checked by the emitter (ConsumerOptions)
    event_time = {key: kwargs.pop(key) for key in EVENT_TIME_KEYWORDS if key in kwargs}
    options = dict(emitfn=emitfn, url=url, sink=sink, executor=executor, keep=keep, queue=queue,
                   cnx_kwargs=cnx_kwargs, workers=workers, **kwargs)
    if emitter is not None:
        if window is not None:
            event_time['window'] = window
        # a custom emitter gets these keywords as given (an EventTimeWindow subclass uses them)
        em = validate_emitter_class(emitter)(name, size=size, interval=interval, **event_time, **options)
    elif window is not None:
        if size is not None or interval is not None:
            given = 'size=' if size is not None else 'interval='
            raise InvalidWindowSpec(f'window= sets the windows by event time; {given} cannot be given with it')
        em = EventTimeWindow(name, window=window, **event_time, **options)
    elif size is not None and interval is None and 'key' in event_time:
        # count windows per key: each key's messages, size at a time, in append order
        em = EventTimeWindow(name, window=count(size), **event_time, **options)
    elif event_time:
        names = ', '.join(f'{key}=' for key in event_time)
        raise ConfigurationError(f'{names} belong to event-time windows: add window=tumbling(seconds), '
                                 'hopping(size, step) or session(gap)')
    elif interval is not None:
        if size is not None:
            logger.warning('minibatch: size=%r is ignored with interval=%r (a time window, as in minibatch 0.6); '
                           'for a count window that looks every interval seconds use emitter=CountWindow',
                           size, interval)
        em = (RelaxedTimeWindow if relaxed else FixedTimeWindow)(name, interval=interval, **options)
    else:
        em = CountWindow(name, size=size if size is not None else 1, **options)
    if source is not None:
        em.stream.attach(source)
    return em


def _run_in_background(em):
    """Run a consumer in this (background) thread; if it dies, log why and keep the exception as ``em.error``."""
    try:
        em.run(blocking=True)
    except BaseException as exc:
        em.error = exc
        logger.exception('minibatch: the background consumer of %r stopped on an error (kept as emitter.error)',
                         em.stream_name)


def streaming(name, fn=None, interval=None, size=None, emitter=None, relaxed=True, keep=False, url=None,
              sink=None, queue=None, source=None, blocking=True, executor=None, max_workers=None, workers=None,
              cnx_kwargs=None, window=None, **kwargs):
    """Consume stream ``name`` with the decorated function, window by window.

    ``window=tumbling(60), key='sensor', time='ts', grace=10`` consumes keyed event-time
    windows instead (see :func:`make_emitter` and docs/windows.rst).

    ``@streaming('s', size=2)`` runs the consumer at once and blocks until it
    is stopped (``True`` put on ``queue``, SIGTERM, Ctrl-C); with
    ``blocking=False`` it runs in a background thread and the decorator
    returns the emitter (call ``.stop()`` to end it; if the consumer dies on
    an error, the error is logged and kept as ``emitter.error``). ``source=`` attaches a
    source to the stream first. ``decorator.make(fn)`` returns the emitter
    without running it; ``decorator.apply(fn)`` is the decorator itself.
    With neither ``size`` nor ``interval`` nor ``emitter``, windows are of
    one message (as in minibatch 0.6). Window arguments are checked here, at
    decoration time.

    See :func:`make_emitter` and :class:`~minibatch.window.WindowEmitter` for the other arguments
    (``max_attempts=``, ``lease=``, ``retry_backoff=``, ``emit_empty=``, ``isolate=``, ``timeout=``
    (seconds a window may run before it is a failed attempt), ``stop_grace=`` (seconds a stopping
    consumer waits for windows in flight)).
    """
    def build(fn):
        return make_emitter(name, emitfn=fn, interval=interval, size=size, relaxed=relaxed, url=url, sink=sink,
                            emitter=emitter, executor=executor, keep=keep, queue=queue, cnx_kwargs=cnx_kwargs,
                            workers=workers, max_workers=max_workers, window=window, **kwargs)

    # build once now so that a bad spec fails where it is written, not in a thread later
    build(None)

    def decorator(fn):
        em = build(fn)
        if source is not None:
            em.stream.attach(source)
        if blocking:
            em.run(blocking=True)
        else:
            thread = threading.Thread(target=_run_in_background, args=(em,), name=f'minibatch-consumer-{name}',
                                      daemon=True)
            em.thread = thread
            thread.start()
        return em

    decorator.make = build
    decorator.apply = decorator
    if fn is not None:
        return decorator(fn)
    return decorator
