"""The ``minibatch`` command (also ``python -m minibatch``).

Today it answers the first question of anyone running streams: where is my
data and what is waiting? ``minibatch status`` lists every stream of the store
with its message counts.
"""
import sys

import click

from minibatch.errors import MinibatchError


@click.group()
@click.version_option(package_name='minibatch', prog_name='minibatch')
@click.option('--url', envvar='MINIBATCH_URL', default=None,
              help='store URL (default: MINIBATCH_URL, MINIBATCH_MONGO_URL, MONGO_URL, else the embedded store)')
@click.pass_context
def cli(ctx, url):
    """minibatch: Python stream processing for humans."""
    ctx.obj = {'url': url}


@cli.command()
@click.argument('streams', nargs=-1)
@click.pass_context
def status(ctx, streams):
    """Show the store and, per stream, how many messages are in each state."""
    from minibatch.store import get_store
    store = get_store(ctx.obj['url'])
    click.echo(f'store: {store.describe()}')
    names = list(streams) or [info.name for info in store.list_streams()]
    if not names:
        click.echo('no streams')
        return
    columns = ('available', 'claimed', 'retry', 'done', 'dead', 'windows')
    width = max(len('stream'), *(len(name) for name in names))
    click.echo(f'{"stream":<{width}}  ' + '  '.join(f'{c:>9}' for c in columns))
    for name in names:
        counts = store.counts(name)
        click.echo(f'{name:<{width}}  ' + '  '.join(f'{counts[c]:>9}' for c in columns))


def main(argv=None):
    """Entry point: errors of minibatch become one line on stderr and exit code 1."""
    try:
        cli.main(args=argv, prog_name='minibatch', standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MinibatchError as exc:
        click.echo(f'minibatch: error: {exc}', err=True)
        sys.exit(1)


if __name__ == '__main__':
    main()
