"""``minibatch demo``: a producer and a consumer end to end, on the store you configured.

It runs on the same store as every other command (``--url``, the
environment, else the embedded one), so that it doubles as a smoke test of
that store and ``minibatch status`` shows its stream afterwards. It refuses
to touch a stream that still has messages waiting, unless asked to clear it.

Everything goes to stdout: the store, the first windows' results, the
consumer's progress and the stream's status at the end. Exit codes: 0 when
every message was processed; 1 with one error line on stderr for bad numbers
(``--messages`` not a multiple of ``--size``), a stream with messages
waiting (without ``--clear``), messages not all processed within
``--timeout``, or a store that cannot be used.
"""
import random
import time

import click

import minibatch
from minibatch.cli.common import CliError, open_stream, pass_store, plural
from minibatch.cli.consume import run_consumer
from minibatch.cli.status import collect, render_text


@click.command(short_help='append messages to a stream and consume them: a smoke test')
@click.option('--messages', type=click.IntRange(min=1), default=100, show_default=True, metavar='N',
              help='messages to append')
@click.option('--size', type=click.IntRange(min=1), default=10, show_default=True, metavar='N',
              help='messages per window')
@click.option('--stream', 'name', default='demo', show_default=True, metavar='NAME', help='the stream to use')
@click.option('--executor', type=click.Choice(['process', 'thread', 'inline']), default='process',
              show_default=True)
@click.option('--workers', type=click.IntRange(min=1), default=2, show_default=True, metavar='N')
@click.option('--timeout', type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar='SECONDS', help='give up if not all messages are processed by then')
@click.option('--clear', is_flag=True, help='remove messages waiting in the stream first')
@pass_store
def demo(store, messages, size, name, executor, workers, timeout, clear):
    """Append messages to a stream 'demo' and consume them, on the configured store.

    A smoke test of your store: it uses the same store as every other command
    (--url, MINIBATCH_URL, ..., else the embedded one), so `minibatch status`
    shows the stream afterwards. It will not touch a stream that has messages
    waiting unless you pass --clear.
    """
    run_demo(store, open_stream(store, name), name, messages, size, executor, workers, timeout, clear)


def average(window):
    """The demo's streaming function: runs in a worker process, once per window."""
    values = [message['value'] for message in window.data]
    return {'count': len(values), 'mean': sum(values) / len(values)}


class ShowWindows:
    """The demo's sink: prints the function's result for the first ``limit`` windows."""

    def __init__(self, echo, limit=5):
        self.echo, self.limit, self.count = echo, limit, 0

    def put(self, result):
        try:
            self._show(result)
        except OSError:  # stdout went away (demo | head): printing is a courtesy, not the window's work
            pass

    def _show(self, result):
        self.count += 1
        if self.count <= self.limit:
            self.echo(f'  window {self.count}: {plural(result["count"], "message")}, mean value {result["mean"]:.1f}')
        elif self.count == self.limit + 1:
            self.echo('  ...')


def run_demo(store, open_stream, name, messages, size, executor, workers, timeout, clear, echo=click.echo):
    """Append ``messages`` messages to stream ``name``, consume them in windows of ``size``, show the status.

    Blocking; returns the consumer's stats.

    :raises CliError: bad numbers, the stream has waiting messages (and not
        ``clear``), or the messages were not all processed within ``timeout``
    """
    if messages < 1 or size < 1:
        raise CliError('--messages and --size must be at least 1')
    if messages % size:
        # count windows wait for exactly `size` messages: a remainder would wait forever
        raise CliError(f'--messages ({messages}) must be a multiple of --size ({size}): '
                       f'a count window holds exactly {size} messages')
    echo(f'store: {store.describe()}')
    stream = open_stream()
    waiting = _waiting(store, name)
    if waiting and not clear:
        raise CliError(f'stream {name!r} already has {plural(waiting, "message")} waiting; '
                       f'use --clear to remove them first, or --stream NAME for another stream')
    if clear:
        removed = stream.clear()
        echo(f'cleared {plural(removed, "message")} from {name!r}')
    started = time.monotonic()
    for start in range(0, messages, 1000):
        stream.append([{'i': i, 'value': round(random.uniform(0, 100), 2)}
                       for i in range(start, min(start + 1000, messages))])
    echo(f'appended {messages} messages to {name!r} in {time.monotonic() - started:.2f}s')
    echo(f'consuming in windows of {size} ({executor} executor, {workers} workers) ...')
    emitter = minibatch.make_emitter(name, emitfn=average, size=size, url=store.url, executor=executor,
                                     workers=workers, sink=ShowWindows(echo))
    started = time.monotonic()
    stats = run_consumer(emitter, timeout=timeout, echo=lambda line: echo('  ' + line), every=0.5,
                         until=lambda: emitter.stats.get('processed', 0) >= messages)
    elapsed = time.monotonic() - started
    processed = stats.get('processed', 0)
    echo(f'processed {processed} messages in {stats.get("committed", 0)} windows in {elapsed:.2f}s')
    echo('')
    for line in render_text(store, collect(store, [name])):
        echo(line)
    if processed < messages:
        raise CliError(f'only {processed} of {messages} messages were processed within {timeout}s')
    echo('')
    echo(f'next: minibatch status {name} --consumers')
    return stats


def _waiting(store, name):
    counts = store.counts(name)
    return counts['available'] + counts['claimed'] + counts['retry']
