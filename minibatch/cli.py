"""The ``minibatch`` command (also ``python -m minibatch``).

Commands: ``status``, ``append``, ``tail``, ``consume``, ``dead-letters``
(``list``, ``requeue``, ``purge``) and ``demo``; see docs/cli.rst. Every
command works on the store chosen by ``--url`` (or ``MINIBATCH_URL``, then the
usual precedence, see :func:`minibatch.store.resolve_url`).

Output meant for programs (JSON, tables, messages) goes to stdout; counts,
progress and errors go to stderr. A failure is one line,
``minibatch: error: ...``, and exit code 1; Ctrl-C exits with 130, except for the
commands it normally ends (``consume``, ``tail -f``, ``status --watch``: 0).
The helpers live in ``minibatch/cli_*.py``; this module only wires them up.
"""
import sys
import time

import click

from minibatch.cli_common import CliError, json_id, one_line, plain, plural, require_stream, setup_logging, \
    shorten, table, to_json
from minibatch import __version__
from minibatch.errors import MinibatchError


class Group(click.Group):
    """A click group that turns minibatch's own errors into the one-line error of :class:`CliError`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinibatchError as exc:
            raise CliError(one_line(exc)) from exc


@click.group(cls=Group)
@click.version_option(__version__, prog_name='minibatch')
@click.option('--url', envvar='MINIBATCH_URL', default=None, metavar='URL',
              help='store URL, e.g. sqlite:///data/mb.db or mongodb://host/db '
                   '(default: MINIBATCH_URL, MINIBATCH_MONGO_URL, MONGO_URL, else the embedded store)')
@click.option('-v', '--verbose', is_flag=True, help="show minibatch's informational log lines too")
@click.pass_context
def cli(ctx, url, verbose):
    """minibatch: Python stream processing for humans."""
    setup_logging(verbose)
    ctx.obj = {'url': url}


def _store(ctx):
    from minibatch.store import get_store
    return get_store(ctx.obj['url'])


def _open_stream(ctx, name):
    """A function that opens (creating if needed) stream ``name`` on the chosen store."""
    from minibatch.models import Stream
    return lambda: Stream.get_or_create(name, url=ctx.obj['url'])


# -- status ---------------------------------------------------------------
@cli.command(short_help='the figures of every stream: backlog, processed, rate, consumers')
@click.argument('streams', nargs=-1)
@click.option('--json', 'as_json', is_flag=True, help='print the figures as JSON (one line per refresh)')
@click.option('--consumers', is_flag=True, help="list each stream's consumer reports too")
@click.option('--watch', type=click.FloatRange(min=0.1), metavar='SECONDS',
              help='refresh every SECONDS until Ctrl-C')
@click.pass_context
def status(ctx, streams, as_json, consumers, watch):
    """Show the store and the figures of every stream (or of the STREAMS named).

    backlog: messages waiting; in_flight: held by a consumer now; processed,
    failed: summed over the consumers' reports; dead: dead letters; rate/s:
    messages per second of the consumers alive; consumers: consumers alive.
    """
    from minibatch.cli_status import collect, render_json, render_text
    store = _store(ctx)

    def show():
        stats = collect(store, streams)
        if as_json:
            click.echo(render_json(store, stats))
        else:
            click.echo('\n'.join(render_text(store, stats, consumers=consumers)))

    if not watch:
        show()
        return
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            if clear:
                click.clear()
            show()
            if not as_json:
                click.echo(f'(every {watch:g}s, Ctrl-C to stop)\n', err=clear)
            time.sleep(watch)
    except KeyboardInterrupt:
        pass


# -- append ---------------------------------------------------------------
@cli.command(short_help='append JSON objects (arguments or stdin lines) to a stream')
@click.argument('stream')
@click.argument('messages', nargs=-1, metavar='[JSON]...')
@click.option('--chunk', type=click.IntRange(min=1), default=1000, show_default=True, metavar='N',
              help='messages per write (each write is all or nothing)')
@click.option('--validate-first', is_flag=True,
              help='read and check all of stdin before writing anything (keeps it in memory)')
@click.option('-q', '--quiet', is_flag=True, help='do not print the count')
@click.pass_context
def append(ctx, stream, messages, chunk, validate_first, quiet):
    """Append JSON objects to STREAM (created if needed).

    Each JSON argument is one message; without arguments, stdin is read as
    JSON lines (one object per line, blank lines skipped). Bad input is one
    error line naming the argument or line, exit code 1: arguments are all
    checked before anything is written; stdin is written in chunks, and the
    chunks before a bad line stay written (unless --validate-first).
    """
    from minibatch import cli_append
    store = _store(ctx)
    if messages:
        chunks = cli_append.from_args(messages)
    else:
        stdin = sys.stdin
        if stdin.isatty() and not quiet:
            click.echo('reading JSON lines from stdin (Ctrl-D to end)', err=True)
        chunks = cli_append.from_lines(stdin, chunk)
    progress = cli_append.Progress(stream, quiet=quiet)
    cli_append.append(store, _open_stream(ctx, stream), stream, chunks, chunk, progress,
                      validate_first=validate_first)
    progress.done()


# -- tail -----------------------------------------------------------------
@cli.command(short_help='print the last messages of a stream; -f follows new ones')
@click.argument('stream')
@click.option('-n', '--lines', 'count', type=click.IntRange(min=0), default=10, metavar='N', show_default=True,
              help='how many of the last messages to print')
@click.option('-f', '--follow', is_flag=True, help='keep printing messages as they are appended')
@click.option('--timeout', type=click.FloatRange(min=0), metavar='SECONDS', help='with -f: stop after SECONDS')
@click.option('--meta', is_flag=True, help='print id, created, state and attempts with the data')
@click.pass_context
def tail(ctx, stream, count, follow, timeout, meta):
    """Print the last messages of STREAM as JSON lines; with -f, follow new ones.

    Read-only: nothing is claimed or consumed. Shows the messages the store
    still holds (waiting, in flight, or kept with keep=True), not dead letters.
    A message a consumer took and removed between two looks is not shown.
    """
    from minibatch.cli_tail import follow_messages, shown
    store = _store(ctx)
    require_stream(store, stream)
    waiter = store.waiter(stream) if follow else None  # before the first read: no append falls in between
    try:
        current = store.messages(stream)
        for message in (shown(current)[-count:] if count else []):
            _print_message(message, meta)
        if follow:
            follow_messages(store, stream, waiter, current, lambda m: _print_message(m, meta), timeout)
    except KeyboardInterrupt:
        pass
    finally:
        if waiter is not None:
            waiter.close()


def _print_message(message, meta):
    if meta:
        click.echo(to_json({'id': json_id(message.id), 'created': message.created, 'state': message.state,
                            'attempts': message.attempts, 'data': message.data}))
    else:
        click.echo(to_json(message.data))


# -- consume --------------------------------------------------------------
@cli.command(short_help='run module:function on the windows of a stream')
@click.argument('stream')
@click.argument('function', metavar='MODULE:FUNCTION')
@click.option('--size', type=click.IntRange(min=1), metavar='N',
              help='windows of exactly N messages (the default, with N=1, when --interval is not given)')
@click.option('--interval', type=click.FloatRange(min=0, min_open=True), metavar='SECONDS',
              help='a window every SECONDS instead of by count')
@click.option('--fixed', is_flag=True, help='with --interval: fixed time slots instead of relaxed ones')
@click.option('--executor', type=click.Choice(['process', 'thread', 'inline']), default='process',
              show_default=True, help='where the function runs')
@click.option('--workers', type=click.IntRange(min=1), metavar='N', help='windows in parallel (default: one per CPU)')
@click.option('--keep', is_flag=True, help='keep processed messages (state done) instead of deleting them')
@click.option('--max-attempts', type=click.IntRange(min=1), default=3, show_default=True, metavar='N',
              help='deliveries of a message before it becomes a dead letter')
@click.option('--retry-backoff', type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar='SECONDS', help='pause before the first retry of a failed window; doubles each time')
@click.option('--timeout', type=click.FloatRange(min=0, min_open=True), metavar='SECONDS',
              help='stop (gracefully) after SECONDS')
@click.option('--progress', type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar='SECONDS', help='seconds between progress lines')
@click.option('-q', '--quiet', is_flag=True, help='no progress lines')
@click.pass_context
def consume(ctx, stream, function, size, interval, fixed, executor, workers, keep, max_attempts, retry_backoff,
            timeout, progress, quiet):
    """Run MODULE:FUNCTION on the windows of STREAM until Ctrl-C, SIGTERM or --timeout.

    MODULE is imported from the current directory too (or give a file,
    path/to/handlers.py:fn). FUNCTION receives a window (window.data is the
    list of messages); it must be a plain function, not one decorated with
    @streaming. The stream is created if needed. Progress goes to stderr.
    """
    from minibatch.cli_consume import load_function, run_consumer, stderr, summary
    from minibatch.consumer import make_emitter
    fn = load_function(function)
    emitter = make_emitter(stream, emitfn=fn, size=size, interval=interval, relaxed=not fixed, url=ctx.obj['url'],
                           executor=executor, workers=workers, keep=keep, max_attempts=max_attempts,
                           retry_backoff=retry_backoff)
    if not quiet:
        window = f'interval={emitter.interval:g}s' + (' fixed' if fixed else '') if interval else f'size={emitter.size}'
        stderr(f'consuming {stream!r} on {emitter.store.describe()} with {function} ({window}, {executor} '
               f'executor{f", {workers} workers" if workers else ""}); Ctrl-C to stop')
    started = time.monotonic()
    run_consumer(emitter, timeout=timeout, echo=None if quiet else stderr, every=progress)
    if not quiet:
        stderr(summary(emitter, time.monotonic() - started))


# -- dead letters ---------------------------------------------------------
@cli.group('dead-letters', cls=Group, short_help='list, requeue or purge dead letters')
def dead_letters():
    """Inspect, requeue or purge the messages that failed too often."""


@dead_letters.command('list', short_help='show dead letters with attempts and last error')
@click.argument('stream')
@click.option('--json', 'as_json', is_flag=True, help='one JSON object per dead letter')
@click.option('-n', '--limit', type=click.IntRange(min=1), metavar='N', help='at most N, oldest first')
@click.pass_context
def dead_letters_list(ctx, stream, as_json, limit):
    """List the dead letters of STREAM, oldest first, with their attempts and last error."""
    store = _store(ctx)
    require_stream(store, stream)
    letters = store.dead_letters(stream, limit=limit)
    if as_json:
        for m in letters:
            click.echo(to_json({'id': json_id(m.id), 'created': m.created, 'attempts': m.attempts,
                                'error': m.error, 'data': m.data}))
        return
    if not letters:
        click.echo(f'no dead letters in {stream!r}')
        return
    rows = [[m.id, m.attempts, plain(m.created)[:19].replace('T', ' '), shorten(_last_line(m.error), 60),
             shorten(to_json(m.data), 60)] for m in letters]
    click.echo('\n'.join(table(('id', 'attempts', 'created', 'error', 'data'), rows, numeric=('attempts',))))
    click.echo(f'{plural(len(letters), "dead letter")}; put them back with: '
               f'minibatch dead-letters requeue {stream} [ID]...', err=True)


@dead_letters.command('requeue', short_help='put dead letters back into the stream')
@click.argument('stream')
@click.argument('ids', nargs=-1, metavar='[ID]...')
@click.pass_context
def dead_letters_requeue(ctx, stream, ids):
    """Put dead letters of STREAM (all, or the IDs as printed by list) back into the stream."""
    store = _store(ctx)
    require_stream(store, stream)
    count = store.requeue(stream, ids=_dead_ids(store, stream, ids))
    click.echo(f'requeued {plural(count, "dead letter")} of {stream!r}')


@dead_letters.command('purge', short_help='delete dead letters for good')
@click.argument('stream')
@click.argument('ids', nargs=-1, metavar='[ID]...')
@click.option('--yes', is_flag=True, help='do not ask for confirmation')
@click.pass_context
def dead_letters_purge(ctx, stream, ids, yes):
    """Delete dead letters of STREAM (all, or the IDs as printed by list). Irreversible."""
    store = _store(ctx)
    require_stream(store, stream)
    selected = _dead_ids(store, stream, ids)
    count = len(selected) if selected is not None else len(store.dead_letters(stream))
    if not count:
        click.echo(f'no dead letters in {stream!r}')
        return
    if not yes:
        try:
            confirmed = click.confirm(f'delete {plural(count, "dead letter")} of {stream!r} for good?', err=True)
        except click.exceptions.Abort:  # no answer (stdin closed) is no
            confirmed = False
        if not sys.stdin.isatty():
            click.echo(err=True)  # the answer was not typed, so the prompt line is still open
        if not confirmed:
            raise CliError('nothing purged (confirm, or pass --yes)')
    purged = store.purge_dead(stream, ids=selected)
    click.echo(f'purged {plural(purged, "dead letter")} of {stream!r}')


def _dead_ids(store, stream, texts):
    """The store's ids for the ``texts`` printed by ``list`` (None for all); CliError for unknown ones.

    Ids are matched against the stream's dead letters as text, so SQLite's
    integers and MongoDB's ObjectIds both round-trip without guessing types.
    """
    if not texts:
        return None
    known = {str(m.id): m.id for m in store.dead_letters(stream)}
    unknown = [text for text in texts if text not in known]
    if unknown:
        raise CliError(f'no dead letter with id {", ".join(unknown)} in {stream!r} '
                       f'(see: minibatch dead-letters list {stream})')
    return [known[text] for text in dict.fromkeys(texts)]


def _last_line(text):
    lines = [line for line in str(text or '').splitlines() if line.strip()]
    return lines[-1].strip() if lines else ''


# -- demo -----------------------------------------------------------------
@cli.command(short_help='append messages to a stream and consume them: a smoke test')
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
@click.pass_context
def demo(ctx, messages, size, name, executor, workers, timeout, clear):
    """Append messages to a stream 'demo' and consume them, on the configured store.

    A smoke test of your store: it uses the same store as every other command
    (--url, MINIBATCH_URL, ..., else the embedded one), so `minibatch status`
    shows the stream afterwards. It will not touch a stream that has messages
    waiting unless you pass --clear.
    """
    from minibatch.cli_demo import run_demo
    store = _store(ctx)
    run_demo(store, _open_stream(ctx, name), name, messages, size, executor, workers, timeout, clear)


def main(argv=None):
    """Entry point: errors become one line on stderr and exit code 1; Ctrl-C exits with 130."""
    try:
        rv = cli.main(args=argv, prog_name='minibatch', standalone_mode=False)
    except click.exceptions.Abort:
        click.echo('minibatch: interrupted', err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MinibatchError as exc:  # raised outside a command, e.g. while parsing
        CliError(one_line(exc)).show()
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == '__main__':
    main()
