"""``minibatch append``: JSON objects from the command line or stdin into a stream.

Input is checked before it is written: each text must be a JSON object the
store can keep. Messages are written in chunks (``stream.append`` of a list
is all or nothing per call). Arguments are all checked before the first
write, so a bad one writes nothing. Stdin is read chunk by chunk, so that an
endless pipe needs no memory: a bad line writes nothing of its own chunk and
nothing after it, while the chunks before it stay written (the error says how
many). ``validate_first`` reads and checks the whole input before writing.

The count (and, on long runs, progress lines) goes to stderr; nothing to
stdout. Exit codes: 0; 1 with one error line on stderr naming the bad
argument or line and saying how many messages were appended before it (also
when the store fails midway).
"""
import json
import sys
import time

import click

from minibatch.cli.common import CliError, one_line, open_stream, pass_store, plural
from minibatch.errors import InvalidMessage, MinibatchError

JSON_TYPES = {list: 'an array', str: 'a string', int: 'a number', float: 'a number', bool: 'true/false',
              type(None): 'null'}


@click.command(short_help='append JSON objects (arguments or stdin lines) to a stream')
@click.argument('stream')
@click.argument('messages', nargs=-1, metavar='[JSON]...')
@click.option('--chunk', type=click.IntRange(min=1), default=1000, show_default=True, metavar='N',
              help='messages per write (each write is all or nothing)')
@click.option('--validate-first', is_flag=True,
              help='read and check all of stdin before writing anything (keeps it in memory)')
@click.option('-q', '--quiet', is_flag=True, help='do not print the count')
@pass_store
def append(store, stream, messages, chunk, validate_first, quiet):
    """Append JSON objects to STREAM (created if needed).

    Each JSON argument is one message; without arguments, stdin is read as
    JSON lines (one object per line, blank lines skipped). Bad input is one
    error line naming the argument or line, exit code 1: arguments are all
    checked before anything is written; stdin is written in chunks, and the
    chunks before a bad line stay written (unless --validate-first).
    """
    if messages:
        chunks = from_args(messages)
    else:
        stdin = sys.stdin
        if stdin.isatty() and not quiet:
            click.echo('reading JSON lines from stdin (Ctrl-D to end)', err=True)
        chunks = from_lines(stdin, chunk)
    progress = Progress(stream, quiet=quiet)
    append_chunks(store, open_stream(store, stream), stream, chunks, chunk, progress, validate_first=validate_first)
    progress.done()


def parse(text, where):
    """The dict encoded by the JSON ``text``; CliError naming ``where`` (e.g. 'line 3') otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f'{where}: invalid JSON ({exc.msg} at column {exc.colno}): {text.strip()[:80]}')
    if not isinstance(doc, dict):
        raise CliError(f'{where}: expected a JSON object {{...}}, got {JSON_TYPES.get(type(doc), type(doc))}')
    return doc


def from_args(texts):
    """One chunk of (where, dict) pairs for the command-line arguments, all parsed before it is handed out."""
    yield [(f'argument {i}', parse(text, f'argument {i}')) for i, text in enumerate(texts, 1)]


def from_lines(lines, chunk):
    """Chunks of at most ``chunk`` (where, dict) pairs from lines of JSON; blank lines are skipped.

    A generator: a line is parsed when its chunk is due, so a bad line is
    reported after the chunks before it were handed out.
    """
    batch = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f'line {lineno}'
        batch.append((where, parse(line, where)))
        if len(batch) >= chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def check(store, batch):
    """Raise CliError naming the first message of ``batch`` the store cannot keep (no write)."""
    try:
        store.validate([doc for _, doc in batch])
    except InvalidMessage:
        # find the culprit, so the error names its line
        for where, doc in batch:
            try:
                store.validate([doc])
            except InvalidMessage as exc:
                raise CliError(f'{where}: {one_line(exc)}')
        raise


class Progress:
    """Counts appended messages; prints the count and rate to stderr every ``every`` seconds."""

    def __init__(self, name, quiet=False, every=2.0):
        self.name, self.quiet, self.every = name, quiet, every
        self.count = 0
        self.started = self.last = time.monotonic()

    def add(self, n):
        self.count += n
        now = time.monotonic()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            click.echo(f'appended {self.count} messages to {self.name!r} ({self.rate():.0f}/s)', err=True)

    def rate(self):
        elapsed = time.monotonic() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0

    def done(self):
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        # a rate only means something for a run long enough to measure
        rate = f' in {elapsed:.1f}s ({self.rate():.0f}/s)' if elapsed >= 1.0 else ''
        click.echo(f'appended {plural(self.count, "message")} to {self.name!r}{rate}', err=True)


def append_chunks(store, open_stream, name, chunks, chunk_size, progress, validate_first=False):
    """Check and append ``chunks`` (lists of (where, dict)) to the stream ``open_stream()`` gives.

    The stream is opened (created if needed) only when the first chunk has
    passed its checks, so bad input does not even create it. Returns the
    number of messages appended.
    """
    stream = None
    try:
        if validate_first:
            chunks = list(chunks)
            for batch in chunks:
                check(store, batch)
        for batch in chunks:
            if not validate_first:
                check(store, batch)
            if stream is None:
                stream = open_stream()
            for start in range(0, len(batch), chunk_size):
                part = [doc for _, doc in batch[start:start + chunk_size]]
                stream.append(part)
                progress.add(len(part))
    except (CliError, MinibatchError) as exc:
        text = exc.message if isinstance(exc, CliError) else one_line(exc)
        if progress.count:
            text += (f'; {plural(progress.count, "message")} (the earlier chunks of the input) were appended to '
                     f'{name!r}, nothing after them')
        else:
            text += f'; nothing was appended to {name!r}'
        raise CliError(text) from exc
    return progress.count
