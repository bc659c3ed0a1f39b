"""``minibatch status``: the figures of :func:`minibatch.status.stream_stats` as a table or JSON.

Read-only. Every number printed is a key of ``stream_stats``; nothing is
computed here besides formatting. The table (or, with ``--json``, one line of
JSON) goes to stdout. Exit codes: 0; 1 with one error line on stderr when a
stream named does not exist (checked before anything is printed) or the store
cannot be used; with ``--watch`` it refreshes until Ctrl-C, which exits with 0.
"""
import datetime
import sys
import time

import click

from minibatch.cli.common import age, pass_store, require_stream, table, to_json
from minibatch.cli.groups import group_table
from minibatch.status import stream_stats
from minibatch.store.base import DEFAULT_GROUP, utcnow

#: (header, key of stream_stats) of the per-stream table
STREAM_COLUMNS = (('backlog', 'backlog'), ('in_flight', 'in_flight'), ('processed', 'processed'),
                  ('failed', 'failed'), ('dead', 'dead'), ('expired', 'expired'), ('rate/s', 'rate'),
                  ('consumers', 'consumers_alive'),
                  ('windows', 'windows'),
                  # event-time consumers (minibatch.eventtime): '-' for a stream without one
                  ('open', 'open_windows'), ('late', 'late'), ('watermark', 'watermark'))

CONSUMER_COLUMNS = ('consumer', 'host', 'pid', 'state', 'seen', 'alive', 'processed', 'failed', 'rate/s')


@click.command(short_help='the figures of every stream: backlog, processed, rate, consumers')
@click.argument('streams', nargs=-1)
@click.option('--json', 'as_json', is_flag=True, help='print the figures as JSON (one line per refresh)')
@click.option('--consumers', is_flag=True, help="list each stream's consumer reports too")
@click.option('--watch', type=click.FloatRange(min=0.1), metavar='SECONDS',
              help='refresh every SECONDS until Ctrl-C')
@pass_store(read_only=True)
def status(store, streams, as_json, consumers, watch):
    """Show the store and the figures of every stream (or of the STREAMS named).

    backlog: messages waiting; in_flight: held by a consumer now; processed,
    failed: summed over the consumers' reports; dead: dead letters; rate/s:
    messages per second of the consumers alive; consumers: consumers alive.
    A stream with consumer groups gets a table of them below: each group's
    lag (messages it has not committed) and how long the oldest has waited.
    """
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


def collect(store, names=()):
    """``{name: stream_stats(...)}`` for ``names`` (all streams of the store when empty), in order.

    :raises minibatch.errors.StreamNotFound: a stream named explicitly does not exist
    """
    if names:
        for name in names:  # every name checked before any figure is read
            require_stream(store, name)
    else:
        names = [info.name for info in store.list_streams()]
    return {name: stream_stats(store, name) for name in names}


def render_json(store, stats):
    """The status as one line of JSON: ``{"store": ..., "streams": {name: stream_stats}}``."""
    return to_json({'store': store.describe(), 'streams': stats})


def render_text(store, stats, consumers=False, now=None):
    """The status as lines of text: the store, a row per stream, groups where there are any and, optionally,
    consumer reports."""
    lines = [f'store: {store.describe()}']
    if not stats:
        return lines + ['no streams']
    headers = ('stream',) + tuple(header for header, _ in STREAM_COLUMNS)
    rows = [[name] + [_number(figures[key], key) for _, key in STREAM_COLUMNS] for name, figures in stats.items()]
    lines += [''] + table(headers, rows, numeric=headers[1:])
    for name, figures in stats.items():
        # the default group alone (any stream a consumer ran on) is the stream's own row: no table for it
        if set(figures.get('groups') or ()) - {DEFAULT_GROUP}:
            lines += ['', f'groups of {name}:'] + ['  ' + line for line in group_table(figures['groups'])]
    if consumers:
        now = now or utcnow()
        for name, figures in stats.items():
            lines += ['', f'consumers of {name}:']
            if not figures['consumers']:
                lines.append('  none reported')
                continue
            rows = [[record.get('id'), record.get('host', ''), record.get('pid', ''), record.get('state', ''),
                     age(record.get('seen'), now), 'yes' if record.get('alive') else 'no',
                     record.get('processed', 0), record.get('failed', 0),
                     # a stopped or silent consumer has no current rate
                     _number(record.get('rate') or 0, 'rate') if record.get('alive') else '-']
                    for record in figures['consumers']]
            lines += ['  ' + line for line in table(CONSUMER_COLUMNS, rows,
                                                    numeric=('pid', 'processed', 'failed', 'rate/s'))]
    return lines


def _number(value, key=None):
    if value is None:
        return '-'
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=' ', timespec='seconds')
    # rates are shown with one decimal even when they happen to be whole numbers
    return f'{float(value):.1f}' if key == 'rate' or isinstance(value, float) else str(value)
