"""``minibatch groups``, ``replay`` and ``delete-group``: a stream's consumer groups.

``groups STREAM`` only reads: a table of the ``groups`` figures of
:func:`minibatch.status.stream_stats` (or, with ``--json``, one line of JSON,
``{"stream": ..., "groups": {group: figures}}``) on stdout; a stream without
groups says so. ``replay STREAM GROUP [--since ...]`` makes the group see the
retained messages of the stream again and prints how many; other groups are
untouched. ``delete-group STREAM GROUP`` removes the group, its copies and its
dead letters, after asking on stderr (``--yes`` skips the question).

Exit codes: 0; 1 with one error line on stderr when the stream or the group
does not exist, ``--since`` is neither a date and time nor a message id of
the stream, ``delete-group`` was not confirmed (no answer, or no terminal to
answer on, is no), or the store cannot be used.
"""
import datetime

import click

from minibatch.cli.common import CliError, confirm_or_refuse, pass_store, plural, require_stream, table, to_json
from minibatch.errors import ConfigurationError
from minibatch.status import stream_stats
from minibatch.store.base import DEFAULT_GROUP, group_stream

#: (header, key of the groups figures of stream_stats) of the groups table
GROUP_COLUMNS = (('group', None), ('start', 'start'), ('lag', 'lag'), ('oldest', 'lag_seconds'),
                 ('in_flight', 'in_flight'), ('dead', 'dead'), ('consumers', 'consumers_alive'), ('rate/s', 'rate'))
GROUP_NUMERIC = ('lag', 'oldest', 'in_flight', 'dead', 'consumers', 'rate/s')


def duration(seconds):
    """``seconds`` as the age of the oldest message a group has not committed: '0s', '4s', '3m', '2h', '5d'."""
    seconds = max(0, int(seconds or 0))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds // size}{unit}'
    return f'{seconds}s'


def group_table(groups):
    """Lines of the table of ``groups`` (the ``groups`` figures of ``stream_stats``), one row per group."""
    rows = []
    for name, figures in groups.items():
        row = [name]
        for header, key in GROUP_COLUMNS[1:]:
            value = figures.get(key)
            if key == 'lag_seconds':
                value = duration(value) if figures.get('lag') else '-'
            elif key == 'rate':
                value = f'{float(value or 0):.1f}'
            elif value is None:
                value = '-'
            row.append(value)
        rows.append(row)
    return table(tuple(header for header, _ in GROUP_COLUMNS), rows, numeric=GROUP_NUMERIC)


def require_group(store, stream, group):
    """Raise ConfigurationError (one clear line) unless ``group`` is registered on ``stream``.

    The default group need not be registered: it is the stream itself.
    """
    if group == DEFAULT_GROUP:
        return
    registry = store.groups(stream)
    if group not in registry:
        raise ConfigurationError(f'stream {stream!r} has no group {group!r} '
                                 f'(its groups: {", ".join(registry) or "none"})')


def group_target(store, stream, group):
    """The stream holding ``group``'s messages of ``stream`` (the stream itself for None or the default group).

    :raises minibatch.errors.StreamNotFound: no stream ``stream``
    :raises minibatch.errors.ConfigurationError: no such group on it
    """
    require_stream(store, stream)
    if group is None or group == DEFAULT_GROUP:
        return stream
    require_group(store, stream, group)
    return group_stream(stream, group)


def parse_since(text):
    """``--since``: a naive UTC datetime for an ISO 8601 date or date and time, else the text as a message id.

    A datetime with a UTC offset is converted to UTC; one without is taken as
    UTC. Digits alone are always a message id (the embedded store's ids are
    integers), so a date needs its dashes: ``2026-12-01``. Anything else is
    handed to the store as a message id, which the store parses (an integer
    on the embedded store, a 24-digit hex ObjectId on MongoDB) or refuses with
    a ConfigurationError.
    """
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            return text
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return moment
    return text


@click.command('groups', short_help="a stream's consumer groups: lag, in flight, dead letters, consumers")
@click.argument('stream')
@click.option('--json', 'as_json', is_flag=True, help='print the figures as one line of JSON')
@pass_store(read_only=True)
def groups(store, stream, as_json):
    """Show the consumer groups of STREAM and how far behind each one is.

    lag: messages the group has not committed yet (dead letters aside);
    oldest: how long the oldest of them has waited; in_flight: held by a
    consumer of the group now; dead: the group's dead letters; consumers:
    consumers of the group alive; rate/s: their messages per second.
    """
    require_stream(store, stream)
    figures = stream_stats(store, stream)['groups']
    if as_json:
        click.echo(to_json({'stream': stream, 'groups': figures}))
        return
    if not figures:
        click.echo(f'no consumer groups on {stream!r}')
        return
    click.echo('\n'.join(group_table(figures)))


@click.command('replay', short_help='make a consumer group process retained messages again')
@click.argument('stream')
@click.argument('group')
@click.option('--since', metavar='DATETIME|ID',
              help='from this ISO 8601 date and time (UTC unless it has an offset) or message id on '
                   '(default: every retained message)')
@pass_store
def replay(store, stream, group, since):
    """Make GROUP of STREAM see the retained messages of STREAM again (from --since on).

    Other groups are untouched. Only retained messages can be replayed: those
    not yet committed by every group, or all of them when a group keeps
    messages (keep=True). GROUP 'default' is the consumers without a group.
    """
    require_stream(store, stream)
    require_group(store, stream, group)
    start = parse_since(since)
    count = store.replay(stream, group, start)
    where = '' if since is None else f' from {since}'
    click.echo(f'replayed {plural(count, "message")} of {stream!r}{where} for group {group!r}')


@click.command('delete-group', short_help='remove a consumer group, its copies and its dead letters')
@click.argument('stream')
@click.argument('group')
@click.option('--yes', is_flag=True, help='do not ask for confirmation')
@pass_store
def delete_group(store, stream, group, yes):
    """Remove GROUP from STREAM: its position, copies and dead letters. Irreversible.

    Stop the group's consumers first: a running one registers the group again.
    """
    require_stream(store, stream)
    registry = store.groups(stream)
    if group not in registry:
        raise CliError(f'stream {stream!r} has no group {group!r} (its groups: {", ".join(registry) or "none"})')
    if not yes:
        confirm_or_refuse(f'delete group {group!r} of {stream!r} with its copies and dead letters?',
                          'nothing deleted (confirm, or pass --yes)')
    alive = stream_stats(store, stream)['groups'].get(group, {}).get('consumers_alive', 0)
    store.delete_group(stream, group)
    click.echo(f'deleted group {group!r} of {stream!r}')
    if alive:
        click.echo(f'warning: {plural(alive, "consumer")} of the group reported recently: '
                   'a running consumer registers the group again; stop them', err=True)

