"""``minibatch consume``: find the user's function and run a consumer with progress on the console.

:func:`load_function` imports ``module:function`` (the current directory is
searched first, as ``python -m`` would) or ``path/to/file.py:function``.
:func:`run_consumer` runs an emitter in the calling thread until it is
stopped: Ctrl-C or SIGTERM (handled by the emitter itself: windows in flight
finish), a timeout, or a condition; meanwhile a reporter thread prints the
consumer's progress every few seconds.

``minibatch consume`` prints its progress and summary on stderr; stdout is
left to the user's function. The stream is created if needed. It needs the
store's URL, not the store: the function is loaded first, so a function that
cannot be imported is reported before the store is touched. Exit codes: 0 when
stopped by Ctrl-C, SIGTERM or ``--timeout`` (windows in flight finish or are
given back); 1 with one error line on stderr when the function cannot be
loaded or the store cannot be used.
"""
import importlib
import importlib.util
import os
import sys
import threading
import time

import click

import minibatch
from minibatch.asyncio_executor import is_async
from minibatch.cli.common import CliError, one_line, pass_settings, plural
from minibatch.executors import EXECUTORS
from minibatch.status import stream_stats

#: seconds between progress lines of ``consume``
PROGRESS_EVERY = 5.0


def _executor_name(ctx, param, value):
    """``--executor``: a name of :data:`minibatch.executors.EXECUTORS` or a Dask scheduler address."""
    if value is None or value in EXECUTORS or value.startswith('dask://'):
        return value
    raise click.BadParameter(f'{value!r} is not one of {", ".join(sorted(EXECUTORS))} or dask://host:port')


SECONDS = click.FloatRange(min=0, min_open=True)

#: options of ``consume`` that are keyword arguments of @streaming of the same name (``window_timeout``:
#: ``timeout=``, since ``--timeout`` stops the command). Passed only when given, so that the defaults are
#: the library's, stated once in minibatch.options.ConsumerOptions.
CONSUMER_OPTIONS = {'executor': 'executor', 'workers': 'workers', 'concurrency': 'concurrency', 'keep': 'keep',
                    'max_attempts': 'max_attempts', 'lease': 'lease', 'retry_backoff': 'retry_backoff',
                    'isolate': 'isolate', 'window_timeout': 'timeout', 'stop_grace': 'stop_grace',
                    'emit_empty': 'emit_empty', 'max_window': 'max_window', 'group': 'group', 'start': 'start'}
#: options that mean something for time windows only
TIME_WINDOW_OPTIONS = ('fixed', 'emit_empty', 'max_window')


@click.command(short_help='run module:function on the windows of a stream')
@click.argument('stream')
@click.argument('function', metavar='MODULE:FUNCTION')
@click.option('--size', type=click.IntRange(min=1), metavar='N',
              help='windows of exactly N messages (the default, with N=1, when --interval is not given)')
@click.option('--interval', type=SECONDS, metavar='SECONDS', help='a window every SECONDS instead of by count')
@click.option('--fixed', is_flag=True, help='with --interval: fixed time slots instead of relaxed ones')
@click.option('--emit-empty', is_flag=True, help='with --interval: call the function for empty windows too')
@click.option('--max-window', type=click.IntRange(min=1), metavar='N',
              help='with --interval: at most N messages per window, the rest go to the next (default 100000)')
@click.option('--executor', callback=_executor_name, metavar='NAME',
              help='where the function runs: process, thread, inline, async or dask://host:port '
                   '(default: process; async for an async def function)')
@click.option('--workers', type=click.IntRange(min=1), metavar='N', help='windows in parallel (default: one per CPU)')
@click.option('--concurrency', type=click.IntRange(min=1), metavar='N',
              help='for an async def function: windows awaiting at once (default 100)')
@click.option('--keep', is_flag=True, help='keep processed messages (state done) instead of deleting them')
@click.option('--group', metavar='NAME', help='the consumer group (every group sees every message; docs/groups.rst)')
@click.option('--start', type=click.Choice(['earliest', 'latest']),
              help='where a new group starts (default earliest: every retained message)')
@click.option('--max-attempts', type=click.IntRange(min=1), metavar='N',
              help='deliveries of a message before it becomes a dead letter (default 3)')
@click.option('--lease', type=SECONDS, metavar='SECONDS',
              help='how long a claim holds without renewal; renewed every third of it (default 60)')
@click.option('--retry-backoff', type=click.FloatRange(min=0), metavar='SECONDS',
              help='pause before the first retry of a failed window; doubles each time (default 1)')
@click.option('--isolate', is_flag=True,
              help='split a failing window in halves until only the messages that fail alone are retried')
@click.option('--window-timeout', type=SECONDS, metavar='SECONDS',
              help="longest a window's function may run; past it the window is a failed attempt (default: none)")
@click.option('--stop-grace', type=click.FloatRange(min=0), metavar='SECONDS',
              help='on stop, how long windows in flight may finish before they are given back (default 30)')
@click.option('--timeout', type=SECONDS, metavar='SECONDS', help='stop (gracefully) after SECONDS')
@click.option('--progress', type=SECONDS, default=5.0, show_default=True,
              metavar='SECONDS', help='seconds between progress lines')
@click.option('-q', '--quiet', is_flag=True, help='no progress lines')
@pass_settings
def consume(settings, stream, function, size, interval, timeout, progress, quiet, **options):
    """Run MODULE:FUNCTION on the windows of STREAM until Ctrl-C, SIGTERM or --timeout.

    MODULE is imported from the current directory too (or give a file,
    path/to/handlers.py:fn). FUNCTION receives a window (window.data is the
    list of messages); it must be a plain function, not one decorated with
    @streaming. The stream is created if needed. Progress goes to stderr.
    The options are the keyword arguments of @streaming of the same name
    (--window-timeout is timeout=); those not given keep the library's defaults.
    """
    if interval is None:
        given = [name for name in TIME_WINDOW_OPTIONS if options[name]]
        if given:
            raise click.UsageError(f'--{given[0].replace("_", "-")} needs --interval (it is for time windows)')
    fixed = options.pop('fixed')
    kwargs = {CONSUMER_OPTIONS[name]: value for name, value in options.items()
              if value is not None and value is not False}  # 0 is a value (--stop-grace 0)
    fn = load_function(function)
    emitter = minibatch.make_emitter(stream, emitfn=fn, size=size, interval=interval, relaxed=not fixed,
                                     url=settings.url, **kwargs)
    if not quiet:
        window = f'interval={emitter.interval:g}s' + (' fixed' if fixed else '') if interval else f'size={emitter.size}'
        executor = kwargs.get('executor') or ('async' if is_async(fn) else 'process')
        workers = kwargs.get('workers')
        stderr(f'consuming {stream!r} on {emitter.store.describe()} with {function} ({window}, {executor} '
               f'executor{f", {workers} workers" if workers else ""}); Ctrl-C to stop')
    started = time.monotonic()
    run_consumer(emitter, timeout=timeout, echo=None if quiet else stderr, every=progress)
    if not quiet:
        stderr(summary(emitter, time.monotonic() - started))


def load_function(spec):
    """Return the callable named by ``spec``: ``package.module:function`` or ``file.py:function``.

    The current directory goes first on ``sys.path`` (worker processes are
    forked and inherit it). A function from a file is shipped to worker
    processes by value, since they could not import the file by name.

    :raises CliError: the spec is malformed, the module cannot be imported
        (any exception while importing it), or it has no such callable
    """
    module_name, sep, attr = spec.rpartition(':')
    if not sep or not module_name or not attr:
        raise CliError(f'expected module:function (e.g. handlers:process_orders), got {spec!r}')
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith('.py') or os.sep in module_name:
            module = _load_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except CliError:
        raise
    except BaseException as exc:  # SyntaxError, ImportError, whatever the module raises on import
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CliError(f'cannot import {module_name!r} for {spec!r}: {type(exc).__name__}: {one_line(exc)}')
    fn = module
    for part in attr.split('.'):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CliError(f'{module_name!r} has no {attr!r} (looked for {spec!r})')
    if not callable(fn):
        raise CliError(f'{spec!r} is a {type(fn).__name__}, not a function')
    return fn


def _load_file(path):
    if not os.path.isfile(path):
        raise CliError(f'no such file: {path!r}')
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    import cloudpickle
    cloudpickle.register_pickle_by_value(module)
    return module


class Reporter(threading.Thread):
    """Prints a consumer's progress every ``every`` seconds and stops it when ``until()`` holds.

    ``processed``, ``failed`` and ``dead`` are this consumer's own counts
    (``emitter.stats``); ``backlog`` and ``in flight`` are the stream's, from
    :func:`minibatch.status.stream_stats`.
    """

    def __init__(self, emitter, every=PROGRESS_EVERY, echo=None, until=None, check_every=0.05):
        super().__init__(name='minibatch-cli-progress', daemon=True)
        self.emitter = emitter
        self.every = every
        self.echo = echo
        self.until = until
        self.check_every = check_every
        self.finished = threading.Event()
        self._last = (time.monotonic(), 0)

    def run(self):
        next_report = time.monotonic() + self.every
        while not self.finished.wait(self.check_every if self.until else self.every):
            if self.until is not None and self.until():
                self.emitter.stop()
                return
            if self.echo is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + self.every
                try:
                    self.echo(self.line())
                except Exception as exc:  # the store may be briefly away: skip a report, not the consumer
                    self.echo(f'progress unavailable: {one_line(exc)}')

    def line(self):
        stats = self.emitter.stats
        processed = stats.get('processed', 0)
        now = time.monotonic()
        then, before = self._last
        self._last = (now, processed)
        rate = (processed - before) / (now - then) if now > then else 0.0
        figures = stream_stats(self.emitter.store, self.emitter.stream_name)
        return (f'processed {processed} ({rate:.1f}/s), failed windows {stats.get("failed", 0)}, '
                f'dead-lettered {stats.get("dead", 0)}, backlog {figures["backlog"]}, '
                f'in flight {figures["in_flight"]}')

    def stop(self):
        self.finished.set()


def run_consumer(emitter, timeout=None, echo=None, every=PROGRESS_EVERY, until=None):
    """Run ``emitter`` in this thread until Ctrl-C, SIGTERM, ``timeout`` seconds or ``until()``.

    Blocking. Stopping is graceful: windows in flight finish (or are given
    back) before this returns. Returns ``emitter.stats``.
    """
    timer = None
    if timeout:
        timer = threading.Timer(timeout, emitter.stop)
        timer.daemon = True
        timer.start()
    reporter = Reporter(emitter, every=every, echo=echo, until=until)
    reporter.start()
    try:
        emitter.run(blocking=True)
    finally:
        reporter.stop()
        if timer is not None:
            timer.cancel()
    return emitter.stats


def summary(emitter, elapsed):
    """The last line of ``consume``: what this consumer did."""
    stats = emitter.stats
    processed = stats.get('processed', 0)
    rate = processed / elapsed if elapsed > 0 else 0.0
    return (f'stopped: processed {plural(processed, "message")} in {plural(stats.get("committed", 0), "window")} '
            f'({rate:.1f}/s over {elapsed:.1f}s), failed windows {stats.get("failed", 0)}, '
            f'dead-lettered {stats.get("dead", 0)}')


def stderr(line):
    click.echo(line, err=True)
