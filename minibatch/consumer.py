"""``@streaming`` and ``make_emitter``: turning a function into a stream consumer."""
import threading

from minibatch.errors import ConfigurationError, InvalidWindowSpec
from minibatch.executors import check_executor
from minibatch.window import CountWindow, FixedTimeWindow, RelaxedTimeWindow, validate_emitter_class


def make_emitter(name, emitfn=None, interval=None, size=None, relaxed=True, url=None, sink=None, emitter=None,
                 executor=None, keep=False, queue=None, cnx_kwargs=None, workers=None, max_workers=None,
                 **kwargs):
    """Build the window emitter for stream ``name`` without running it.

    Exactly one of ``size=N`` (:class:`CountWindow`), ``interval=S``
    (:class:`RelaxedTimeWindow`, or :class:`FixedTimeWindow` with
    ``relaxed=False``) or ``emitter=Class`` chooses the strategy; ``emitter``
    may be combined with ``size`` or ``interval``, which it then receives as
    ``interval``. With none of them, the stream's own interval is used with a
    relaxed time window. Other keyword arguments reach the emitter class.

    :raises minibatch.errors.InvalidWindowSpec: inconsistent or out-of-range window arguments
    :raises minibatch.errors.ConfigurationError: a bad stream name, ``executor=`` or ``workers=``
    """
    from minibatch.models import Stream
    if not isinstance(name, Stream) and (not isinstance(name, str) or not name):
        raise ConfigurationError(f'a stream name must be a non-empty string, got {name!r}')
    workers = workers if workers is not None else max_workers
    check_executor(executor, workers)
    if size is not None and interval is not None:
        raise InvalidWindowSpec('give either size= (count windows) or interval= (time windows), not both')
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InvalidWindowSpec(f'size must be an integer >= 1, got {size!r}')
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                 or interval <= 0):
        raise InvalidWindowSpec(f'interval must be a number of seconds > 0, got {interval!r}')
    if size is not None and not relaxed and emitter is None:
        raise InvalidWindowSpec('relaxed=False applies to time windows: use interval= with it, not size=')
    options = dict(emitfn=emitfn, url=url, sink=sink, executor=executor, keep=keep, queue=queue,
                   cnx_kwargs=cnx_kwargs, workers=workers, **kwargs)
    if emitter is not None:
        cls = validate_emitter_class(emitter)
        return cls(name, interval=size if size is not None else interval, **options)
    if size is not None:
        return CountWindow(name, interval=size, **options)
    if interval is None:
        interval = Stream.get_or_create(name, url=url, **(cnx_kwargs or {})).interval
    return (RelaxedTimeWindow if relaxed else FixedTimeWindow)(name, interval=interval, **options)


def streaming(name, fn=None, interval=None, size=None, emitter=None, relaxed=True, keep=False, url=None,
              sink=None, queue=None, source=None, blocking=True, executor=None, max_workers=None, workers=None,
              cnx_kwargs=None, **kwargs):
    """Consume stream ``name`` with the decorated function, window by window.

    ``@streaming('s', size=2)`` runs the consumer at once and blocks until it
    is stopped (``True`` put on ``queue``, SIGTERM, Ctrl-C); with
    ``blocking=False`` it runs in a background thread and the decorator
    returns the emitter (call ``.stop()`` to end it). ``source=`` attaches a
    source to the stream first. ``decorator.make(fn)`` returns the emitter
    without running it. Window arguments are checked here, at decoration time.

    See :func:`make_emitter` and :class:`~minibatch.window.WindowEmitter` for the other arguments
    (``max_attempts=``, ``lease=``, ``retry_backoff=``, ``emit_empty=``).
    """
    def build(fn):
        return make_emitter(name, emitfn=fn, interval=interval, size=size, relaxed=relaxed, url=url, sink=sink,
                            emitter=emitter, executor=executor, keep=keep, queue=queue, cnx_kwargs=cnx_kwargs,
                            workers=workers, max_workers=max_workers, **kwargs)

    # build once now so that a bad spec fails where it is written, not in a thread later
    build(None)

    def decorator(fn):
        em = build(fn)
        if source is not None:
            em.stream.attach(source)
        if blocking:
            em.run(blocking=True)
        else:
            thread = threading.Thread(target=em.run, name=f'minibatch-consumer-{name}', daemon=True)
            em.thread = thread
            thread.start()
        return em

    decorator.make = build
    if fn is not None:
        return decorator(fn)
    return decorator
