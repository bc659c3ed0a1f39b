"""Pieces shared by the ``minibatch`` commands: the error line, the store, JSON output, tables.

:class:`Group` turns minibatch's own errors into the one-line error of
:class:`CliError` (exit code 1). :func:`pass_store` hands a command the store
chosen by the group's ``--url``, resolved once per invocation; an unknown URL
scheme or an unreachable store raised while resolving it becomes that error
line too. Nothing here decides a figure: the numbers come from the store and
from :func:`minibatch.status.stream_stats`; this module only prints them.
"""
import datetime
import functools
import json
import logging
import sys

import click

from minibatch.errors import MinibatchError, StreamNotFound


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``minibatch: error: <message>``, exit code 1."""
    exit_code = 1

    def show(self, file=None):
        click.echo(f'minibatch: error: {one_line(self.format_message())}', err=True, file=file)


def one_line(text):
    """``text`` with its lines joined, so an error is always one line on stderr."""
    return ' '.join(part.strip() for part in str(text).splitlines() if part.strip())


class Group(click.Group):
    """A click group that turns minibatch's own errors into the one-line error of :class:`CliError`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinibatchError as exc:
            raise CliError(one_line(exc)) from exc


# -- the store ----------------------------------------------------------
class Settings:
    """What the group's options chose, shared by the commands of one invocation (``ctx.obj``)."""

    def __init__(self, url=None):
        #: the --url given (None: the environment decides, see :func:`minibatch.store.resolve_url`)
        self.url = url
        self._store = None
        self._reader = None

    @property
    def store(self):
        """The store for :attr:`url`, resolved on first use and kept.

        :raises minibatch.errors.MinibatchError: unknown URL scheme, missing
            driver, unreachable store (as :func:`minibatch.store.get_store` does)
        """
        if self._store is None:
            from minibatch.store import get_store
            self._store = get_store(self.url)
        return self._store


    @property
    def reader(self):
        """The store for :attr:`url` for commands that only read, resolved on first use and kept.

        Opened read-only where the store can be (``opens_read_only``: the
        embedded store), so that a user who may only read the file can still
        look, and nothing (no file, no folder) is created by looking.

        :raises minibatch.errors.MinibatchError: as :attr:`store`
        """
        if self._reader is None:
            from minibatch.store import get_store, resolve_url, store_class
            read_only = store_class(resolve_url(self.url)).opens_read_only
            self._reader = get_store(self.url, **({'readonly': True} if read_only else {}))
        return self._reader


#: command decorator: pass the :class:`Settings` of the group as the first argument
pass_settings = click.make_pass_decorator(Settings, ensure=True)


def pass_store(fn=None, *, read_only=False):
    """Command decorator: call ``fn(store, ...)`` with the store the group's ``--url`` chose.

    The store is resolved when the command starts, before its own work, and
    only once however many commands ask for it. Its errors are minibatch
    errors, so the command's :class:`Group` prints them as one line.
    ``@pass_store(read_only=True)`` is for commands that only read: they get
    :attr:`Settings.reader`.
    """
    if fn is None:
        return functools.partial(pass_store, read_only=read_only)

    @pass_settings
    def wrapper(settings, *args, **kwargs):
        return fn(settings.reader if read_only else settings.store, *args, **kwargs)
    return functools.update_wrapper(wrapper, fn)


def open_stream(store, name):
    """A function that opens (creating if needed) stream ``name`` on ``store``, for when it is first needed."""
    from minibatch.models import Stream
    # store.url is the URL the store was resolved from, so this is the very same store object
    return lambda: Stream.get_or_create(name, url=store.url)


# -- console --------------------------------------------------------------
class StderrHandler(logging.Handler):
    """Logs to whatever ``sys.stderr`` is at the time of the record (click's test runner swaps it)."""

    def emit(self, record):
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # a log line must never break a command
            self.handleError(record)


def setup_logging(verbose):
    """Show minibatch's warnings (failed windows, dead letters) on stderr; INFO too with ``verbose``."""
    logger = logging.getLogger('minibatch')
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter('%(message)s'))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# -- values -------------------------------------------------------------
def plain(value):
    """``json.dumps`` default: datetimes as ISO 8601 in UTC, ObjectIds and the rest as strings."""
    if isinstance(value, datetime.datetime):
        # the store's datetimes are naive UTC; say so in the text
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(value, **kwargs):
    """One line of JSON for ``value`` (see :func:`plain` for non-JSON types)."""
    return json.dumps(value, default=plain, separators=kwargs.pop('separators', (', ', ': ')), **kwargs)


def json_id(message_id):
    """A message id as it appears in JSON output: SQLite's integers stay integers, ObjectIds become hex."""
    return message_id if isinstance(message_id, int) else str(message_id)


def age(moment, now):
    """``moment`` (naive UTC) relative to ``now``: '4s ago', '3m ago', '2h ago', '5d ago'."""
    if moment is None:
        return 'never'
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds // size}{unit} ago'
    return f'{seconds}s ago'


def plural(count, noun):
    """'1 message', '3 messages'."""
    return f'{count} {noun}' if count == 1 else f'{count} {noun}s'


def shorten(text, width):
    """``text`` cut to ``width`` characters, with '...' when it was longer."""
    text = str(text)
    return text if len(text) <= width else text[:max(0, width - 3)] + '...'


# -- tables -------------------------------------------------------------
def table(headers, rows, numeric=()):
    """Lines of a plain-text table; columns named in ``numeric`` are right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells):
        out = [cell.rjust(w) if h in numeric else cell.ljust(w) for cell, w, h in zip(cells, widths, headers)]
        return '  '.join(out).rstrip()
    return [line(headers)] + [line(row) for row in rows]


# -- store lookups ------------------------------------------------------
def confirm_or_refuse(question, refusal):
    """Ask ``question`` on stderr unless the caller passed --yes; CliError(``refusal``) unless confirmed.

    No answer (stdin closed) is no.
    """
    try:
        confirmed = click.confirm(question, err=True)
    except click.exceptions.Abort:
        confirmed = False
    if not sys.stdin.isatty():
        click.echo(err=True)  # the answer was not typed, so the prompt line is still open
    if not confirmed:
        raise CliError(refusal)


def require_stream(store, name):
    """Raise StreamNotFound (one clear line) unless stream ``name`` exists in ``store``."""
    if store.get_stream(name) is None:
        raise StreamNotFound(f'no stream named {name!r} in {store.describe()}')
