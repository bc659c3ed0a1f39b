"""The ``minibatch`` command (also ``python -m minibatch``).

Commands: ``status``, ``append``, ``tail``, ``consume``, ``dead-letters``
(``list``, ``requeue``, ``purge``), ``groups``, ``replay``, ``delete-group``,
``demo`` and ``dashboard``; see docs/cli.rst
and docs/dashboard.rst. Every
command works on the store chosen by ``--url`` (or ``MINIBATCH_URL``, then the
usual precedence, see :func:`minibatch.store.resolve_url`), which
:func:`~minibatch.cli.common.pass_store` resolves once and hands to the
commands that need it.

Output meant for programs (JSON, tables, messages) goes to stdout; counts,
progress and errors go to stderr. A failure is one line,
``minibatch: error: ...``, and exit code 1; wrong options or arguments print
click's usage message and exit with 2; Ctrl-C exits with 130, except for the
commands it normally ends (``consume``, ``tail -f``, ``status --watch``: 0).

One module per command group, each stating its command's contract; this
module holds the group (:data:`cli`), its options, the registration of the
commands and the entry point (:func:`main`). Shared helpers are in
:mod:`minibatch.cli.common`.
"""
import sys

import click

from minibatch import __version__
from minibatch.cli import append, consume, dashboard, dead_letters, demo, groups, status, tail
from minibatch.cli.common import CliError, Group, Settings, one_line, setup_logging
from minibatch.errors import MinibatchError


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
    ctx.obj = Settings(url)


for command in (status.status, append.append, tail.tail, consume.consume, dead_letters.dead_letters, groups.groups,
                groups.replay, groups.delete_group, demo.demo, dashboard.dashboard):
    cli.add_command(command)
del command


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
