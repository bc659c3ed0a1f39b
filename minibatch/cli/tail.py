"""``minibatch tail -f``: print new messages of a stream as they arrive, without taking any.

The store contract has no "messages after id X" query, so each look reads
the stream's messages and prints those not seen before (ids are compared as
a set: MongoDB ObjectIds of several producers are not strictly ordered).
Looks happen when the store's waiter signals a change, at least once a
second, and at most every ``MIN_GAP`` seconds, so a busy stream is not read
continuously. Cost per look grows with the stream: a tool for watching, not
a consumer.

``minibatch tail`` prints the last messages as JSON lines on stdout, then,
with ``-f``, the new ones. Read-only: nothing is claimed or consumed. Exit
codes: 0 (also when ``-f`` ends by Ctrl-C or ``--timeout``); 1 with one error
line on stderr when the stream does not exist or the store cannot be used.
"""
import time

import click

from minibatch.cli.common import json_id, pass_store, require_stream, to_json
from minibatch.store.base import DEAD

#: shortest pause between two reads of the stream while following
MIN_GAP = 0.1
#: longest pause: stores without push wake-ups are looked at this often anyway
MAX_GAP = 1.0


@click.command(short_help='print the last messages of a stream; -f follows new ones')
@click.argument('stream')
@click.option('-n', '--lines', 'count', type=click.IntRange(min=0), default=10, metavar='N', show_default=True,
              help='how many of the last messages to print')
@click.option('-f', '--follow', is_flag=True, help='keep printing messages as they are appended')
@click.option('--timeout', type=click.FloatRange(min=0), metavar='SECONDS', help='with -f: stop after SECONDS')
@click.option('--meta', is_flag=True, help='print id, created, state and attempts with the data')
@pass_store(read_only=True)
def tail(store, stream, count, follow, timeout, meta):
    """Print the last messages of STREAM as JSON lines; with -f, follow new ones.

    Read-only: nothing is claimed or consumed. Shows the messages the store
    still holds (waiting, in flight, or kept with keep=True), not dead letters.
    A message a consumer took and removed between two looks is not shown.
    """
    require_stream(store, stream)
    waiter = store.waiter(stream) if follow else None  # before the first read: no append falls in between
    try:
        current = store.messages(stream)
        for message in (shown(current)[-count:] if count else []):
            print_message(message, meta)
        if follow:
            follow_messages(store, stream, waiter, current, lambda m: print_message(m, meta), timeout)
    except KeyboardInterrupt:
        pass
    finally:
        if waiter is not None:
            waiter.close()


def print_message(message, meta):
    """One message as a line of JSON on stdout: its data, or with ``meta`` its id, created, state and attempts too."""
    if meta:
        click.echo(to_json({'id': json_id(message.id), 'created': message.created, 'state': message.state,
                            'attempts': message.attempts, 'data': message.data}))
    else:
        click.echo(to_json(message.data))


def shown(messages):
    """The messages ``tail`` prints: all but dead letters (``minibatch dead-letters list`` shows those)."""
    return [m for m in messages if m.state != DEAD]


def follow_messages(store, name, waiter, current, emit, timeout=None):
    """Call ``emit(message)`` for each message of ``name`` not in ``current``, until ``timeout``.

    Blocking; read-only. ``current`` is the last full read (every state, so
    a dead letter that is requeued later is not printed twice). Returns when
    ``timeout`` seconds have passed (never when None; Ctrl-C raises
    KeyboardInterrupt to the caller).
    """
    seen = {m.id for m in current}
    deadline = None if timeout is None else time.monotonic() + timeout
    last_read = time.monotonic()
    while True:
        remaining = MAX_GAP if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return
        waiter.wait(min(MAX_GAP, remaining))
        gap = MIN_GAP - (time.monotonic() - last_read)
        if gap > 0:
            time.sleep(gap)
        current = store.messages(name)
        last_read = time.monotonic()
        for message in shown(current):
            if message.id not in seen:
                emit(message)
        seen = {m.id for m in current}
