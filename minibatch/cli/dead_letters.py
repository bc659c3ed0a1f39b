"""``minibatch dead-letters list|requeue|purge``: the messages that failed too often.

``list`` prints a table (or, with ``--json``, one object per line with the
full error and the data) on stdout and the count on stderr; it only reads.
``requeue`` makes dead letters available again with their attempts reset;
``purge`` deletes them for good after asking on stderr (``--yes`` skips the
question). Both take every dead letter of the stream, or only the IDs given,
written as ``list`` prints them; an ID that is not a dead letter of the
stream is an error, and then nothing is changed.

Exit codes: 0; 1 with one error line on stderr when the stream (or the
group) does not exist, an ID is unknown, ``purge`` was not confirmed (no answer, or no
terminal to answer on, is no), or the store cannot be used.
"""

import click

from minibatch.cli.common import (CliError, Group, confirm_or_refuse, json_id, pass_store, plain, plural, shorten,
                                  table, to_json)
from minibatch.cli.groups import group_target

#: the --group option of every dead-letters command
group_option = click.option('-g', '--group', metavar='GROUP',
                            help="the dead letters of consumer group GROUP of STREAM (its stream STREAM[GROUP])")


@click.group('dead-letters', cls=Group, short_help='list, requeue or purge dead letters')
def dead_letters():
    """Inspect, requeue or purge the messages that failed too often."""


@dead_letters.command('list', short_help='show dead letters with attempts and last error')
@click.argument('stream')
@click.option('--json', 'as_json', is_flag=True, help='one JSON object per dead letter')
@click.option('-n', '--limit', type=click.IntRange(min=1), metavar='N', help='at most N, oldest first')
@group_option
@pass_store(read_only=True)
def dead_letters_list(store, stream, as_json, limit, group):
    """List the dead letters of STREAM, oldest first, with their attempts and last error."""
    hint = f'{stream} --group {group}' if group else stream
    stream = group_target(store, stream, group)
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
               f'minibatch dead-letters requeue {hint} [ID]...', err=True)


@dead_letters.command('requeue', short_help='put dead letters back into the stream')
@click.argument('stream')
@click.argument('ids', nargs=-1, metavar='[ID]...')
@group_option
@pass_store
def dead_letters_requeue(store, stream, ids, group):
    """Put dead letters of STREAM (all, or the IDs as printed by list) back into the stream."""
    stream = group_target(store, stream, group)
    count = store.requeue(stream, ids=_dead_ids(store, stream, ids))
    click.echo(f'requeued {plural(count, "dead letter")} of {stream!r}')


@dead_letters.command('purge', short_help='delete dead letters for good')
@click.argument('stream')
@click.argument('ids', nargs=-1, metavar='[ID]...')
@click.option('--yes', is_flag=True, help='do not ask for confirmation')
@group_option
@pass_store
def dead_letters_purge(store, stream, ids, yes, group):
    """Delete dead letters of STREAM (all, or the IDs as printed by list). Irreversible."""
    stream = group_target(store, stream, group)
    selected = _dead_ids(store, stream, ids)
    count = len(selected) if selected is not None else len(store.dead_letters(stream))
    if not count:
        click.echo(f'no dead letters in {stream!r}')
        return
    if not yes:
        confirm_or_refuse(f'delete {plural(count, "dead letter")} of {stream!r} for good?',
                          'nothing purged (confirm, or pass --yes)')
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
